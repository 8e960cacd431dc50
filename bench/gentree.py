#!/usr/bin/env python3
"""Deterministic benchmark tree for bench/bench.sh (see docs/benchmarks.md).

At scale 1 the tree is about 1 GiB, shaped like a small hosted tenant:

  www/        30 000 small text-like files (PHP, HTML, JS, CSS, text), 510 MiB in all,
              log-normal sizes averaging ~17 KiB, in nested directories
  db/dump.sql one 300 MiB mysqldump-like file (extended INSERT lines of varied values)
  uploads/media.bin
              200 MiB of seeded pseudo-random bytes (stands for already-compressed media)

--scale F multiplies the number of small files and the size of every part by F. The same
scale and seed always give the same bytes, names, modes and times. Text is drawn from large
pools of generated lines, so it compresses like real source code (a few times), not like
repeated identical content.
"""

import argparse
import math
import os
import random
import sys
import time

MIB = 1 << 20
SMALL_FILES = 30_000
SMALL_BYTES = 510 * MIB
SQL_BYTES = 300 * MIB
RANDOM_BYTES = 200 * MIB
# Every file and directory gets this mtime, so two runs make the same tar stream.
MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z

SYLLABLES = (
    "a al an ar as at ba be bo ca ce ci co da de di do el en er es et fa fe fi fo ga ge "
    "gi go ha he hi ho il in is it ka ke ki ko la le li lo lu ma me mi mo mu na ne ni no "
    "nu ol on or os pa pe pi po pu ra re ri ro ru sa se si so su ta te ti to tu ul un ur "
    "va ve vi vo wa we wi xa ya yo za ze zo th sh ch st tr pr gr bl cl fl"
).split()
KEYWORDS = (
    "the of and to in is that for it as with was on be by this are from or an at not "
    "user post page item order cart price name title content status date id value key "
    "data list get set add update delete create query result error message config "
    "option field form input output file path url link image admin site theme plugin "
    "widget menu header footer search filter sort count total request response session "
    "cache token client server database table column row index meta author comment"
).split()


def make_vocab(rng, n):
    words = set(KEYWORDS)
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    rest = sorted(words - set(KEYWORDS))
    rng.shuffle(rest)
    vocab = KEYWORDS + rest  # common words first, as in real text
    # Zipf-like frequencies: a few very common words, a long tail of rare ones.
    cum, acc = [], 0.0
    for rank in range(len(vocab)):
        acc += 1.0 / (rank + 1) ** 1.05
        cum.append(acc)
    return vocab, cum


class Words:
    def __init__(self, rng, vocab, cum):
        self.rng, self.vocab, self.cum = rng, vocab, cum

    def take(self, k):
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=k)

    def one(self):
        return self.take(1)[0]

    def ident(self):
        w = self.take(self.rng.randint(1, 3))
        return "_".join(w) if self.rng.random() < 0.6 else w[0] + "".join(x.title() for x in w[1:])

    def text(self, lo, hi):
        return " ".join(self.take(self.rng.randint(lo, hi)))


def php_line(rng, w):
    i = " " * (4 * rng.randint(0, 4))
    r = rng.random()
    if r < 0.15:
        return f"{i}${w.ident()} = $this->{w.ident()}('{w.one()}', ${w.ident()});"
    if r < 0.25:
        return f"{i}if (${w.ident()} === '{w.one()}' && !empty(${w.ident()}['{w.one()}'])) {{"
    if r < 0.35:
        return f"{i}// {w.text(3, 14)}"
    if r < 0.45:
        return f"{i}return ${w.ident()}->{w.ident()}[{rng.randint(0, 99)}] ?? null;"
    if r < 0.55:
        return f"{i}echo esc_html(__('{w.text(1, 6)}', '{w.one()}'));"
    if r < 0.62:
        args = ", ".join("$" + w.ident() for _ in range(rng.randint(0, 4)))
        return f"{i}public function {w.ident()}({args})"
    if r < 0.70:
        return f"{i}}}"
    if r < 0.78:
        return f"{i}* @param {rng.choice(['string', 'int', 'array', 'bool', 'mixed'])} ${w.ident()} {w.text(2, 9)}"
    if r < 0.86:
        return f"{i}${w.ident()}[] = array('{w.one()}' => {rng.randint(0, 100000)}, '{w.one()}' => '{w.text(1, 4)}');"
    return f"{i}{w.ident()}(${w.ident()}, {rng.randint(0, 4096)}, '{w.one()}/{w.one()}');"


def html_line(rng, w):
    i = " " * (2 * rng.randint(0, 6))
    r = rng.random()
    if r < 0.25:
        return f'{i}<div class="{w.one()}-{w.one()} {w.one()}" id="{w.ident()}-{rng.randint(1, 9999)}">'
    if r < 0.45:
        return f'{i}<a href="/{w.one()}/{w.one()}-{rng.randint(1, 99999)}.html" title="{w.text(1, 4)}">{w.text(1, 6)}</a>'
    if r < 0.65:
        return f"{i}<p>{w.text(6, 30).capitalize()}.</p>"
    if r < 0.75:
        return f'{i}<img src="/uploads/{rng.randint(2012, 2024)}/{rng.randint(1, 12):02d}/{w.ident()}.jpg" width="{rng.randint(16, 1920)}" alt="{w.text(1, 5)}">'
    if r < 0.85:
        return f"{i}</{rng.choice(['div', 'li', 'ul', 'section', 'span', 'td', 'tr'])}>"
    return f'{i}<li><span class="{w.one()}">{w.text(1, 5)}</span> {rng.randint(0, 9999)}</li>'


def js_line(rng, w):
    i = " " * (2 * rng.randint(0, 5))
    r = rng.random()
    if r < 0.2:
        return f"{i}var {w.ident()} = function ({w.ident()}, {w.ident()}) {{"
    if r < 0.4:
        return f"{i}{w.ident()}.{w.ident()}({w.ident()}, {rng.randint(0, 1000)});"
    if r < 0.55:
        return f"{i}if (!{w.ident()}.{w.ident()}) {{ return {rng.choice(['null', 'false', '0', 'undefined'])}; }}"
    if r < 0.7:
        return f"{i}// {w.text(3, 12)}"
    if r < 0.85:
        return f"{i}$('.{w.one()}-{w.one()}').on('{rng.choice(['click', 'change', 'submit', 'keyup'])}', {w.ident()});"
    return f"{i}}});"


def css_line(rng, w):
    r = rng.random()
    if r < 0.3:
        return f".{w.one()}-{w.one()} .{w.one()}, #{w.ident()} {{"
    if r < 0.9:
        prop = rng.choice(["margin", "padding", "width", "height", "top", "left", "font-size", "line-height"])
        if rng.random() < 0.3:
            return f"  color: #{rng.randrange(1 << 24):06x};"
        return f"  {prop}: {rng.randint(0, 64)}px {rng.randint(0, 64)}px;"
    return "}"


def text_line(rng, w):
    r = rng.random()
    if r < 0.1:
        return ""
    if r < 0.2:
        return f"## {w.text(2, 6).title()}"
    return w.text(8, 24).capitalize() + "."


KINDS = [  # (extension, line maker, weight)
    ("php", php_line, 40),
    ("html", html_line, 20),
    ("js", js_line, 15),
    ("css", css_line, 10),
    ("txt", text_line, 8),
    ("md", text_line, 7),
]


def set_times(path):
    os.utime(path, (MTIME, MTIME), follow_symlinks=False)


def gen_small(rng, w, root, n_files, total_bytes, pool_lines):
    pools = {}
    for ext, maker, _ in KINDS:
        lines = [maker(rng, w) for _ in range(pool_lines)]
        pools[ext] = (lines, sum(len(x) + 1 for x in lines) / len(lines))
    exts = [k[0] for k in KINDS]
    weights = [k[2] for k in KINDS]

    # Log-normal sizes (median ~9 KiB, long tail), scaled so the total is exact.
    raw = [min(rng.lognormvariate(0.0, 1.15), 60.0) for _ in range(n_files)]
    factor = total_bytes / sum(raw)
    sizes = [max(1, int(x * factor)) for x in raw]
    diff = total_bytes - sum(sizes)
    step = 1 if diff > 0 else -1
    j = 0
    while diff != 0:  # spread the rounding error, one byte per file
        if sizes[j % n_files] + step >= 1:
            sizes[j % n_files] += step
            diff -= step
        j += 1

    # Directories: sites / sections / modules / leaves, about 30 files per leaf directory.
    n_dirs = max(1, n_files // 30)
    dirs = []
    for d in range(n_dirs):
        parts = [f"site{d % 7}", w.one() + f"-{d % 23}", w.ident() + f"-{d}"]
        if d % 3 == 0:
            parts.append(w.one())
        dirs.append(os.path.join(root, "www", *parts))
    for d in dirs:
        os.makedirs(d, exist_ok=True)

    for idx, size in enumerate(sizes):
        ext = rng.choices(exts, weights)[0]
        lines, avg = pools[ext]
        k = int(size / avg * 1.3) + 2
        header = f"/* {idx} {w.text(2, 8)} */\n" if ext in ("php", "js", "css") else f"<!-- {idx} -->\n" if ext == "html" else f"# {idx}\n"
        body = (header + "\n".join(rng.choices(lines, k=k))).encode()
        while len(body) < size:  # rare: a file larger than its sampled lines
            body += b"\n" + "\n".join(rng.choices(lines, k=k)).encode()
        body = body[: size - 1] + b"\n"
        path = os.path.join(dirs[idx % n_dirs], f"{w.ident()}-{idx}.{ext}")
        with open(path, "wb") as f:
            f.write(body)
        set_times(path)


def gen_sql(rng, w, path, total_bytes):
    tables = [("wp_posts", 0), ("wp_postmeta", 1), ("wp_comments", 2), ("wp_options", 3), ("orders", 4)]
    # Pools of value tuples (all but the id), so rows vary without a per-value cost.
    bodies = []
    for _ in range(200_000):
        t = rng.random()
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1_300_000_000 + rng.randrange(400_000_000)))
        if t < 0.4:
            bodies.append(f"{rng.randint(1, 5000)},'{date}','{w.text(2, 9).title()}','{w.text(8, 60)}','{rng.choice(['publish', 'draft', 'private', 'inherit'])}',{rng.randint(0, 999)}")
        elif t < 0.7:
            bodies.append(f"{rng.randint(1, 900000)},'_{w.ident()}','{w.text(1, 12)}'")
        elif t < 0.9:
            bodies.append(f"{rng.randint(1, 900000)},'{w.text(1, 3).title()}','{w.one()}{rng.randint(1, 999)}@{w.one()}.example','{rng.randint(1, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}','{date}','{w.text(4, 40)}'")
        else:
            bodies.append(f"{rng.randint(1, 99999)},{rng.randint(1, 99999) / 100:.2f},'{rng.choice(['EUR', 'USD', 'CHF'])}','{date}',{rng.randint(0, 1)}")
    written = 0
    next_id = 1
    with open(path, "wb") as f:
        head = (
            "-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n"
            "-- Host: localhost    Database: tenant\n"
            "/*!40101 SET NAMES utf8mb4 */;\n\n"
        ).encode()
        f.write(head)
        written += len(head)
        while written < total_bytes:
            table = rng.choice(tables)[0]
            rows = rng.choices(bodies, k=rng.randint(20, 400))
            parts = []
            for body in rows:
                parts.append(f"({next_id},{body})")
                next_id += 1
            line = f"INSERT INTO `{table}` VALUES {','.join(parts)};\n".encode()
            line = line[: total_bytes - written]
            f.write(line)
            written += len(line)
    set_times(path)


def gen_random(rng, path, total_bytes):
    with open(path, "wb") as f:
        left = total_bytes
        while left:
            n = min(left, 16 * MIB)
            f.write(rng.randbytes(n))
            left -= n
    set_times(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory to create (must not exist)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=20240101)
    a = ap.parse_args()
    if a.scale <= 0:
        sys.exit("gentree: --scale must be positive")
    os.umask(0o022)
    os.makedirs(a.out)
    for sub in ("www", "db", "uploads"):
        os.makedirs(os.path.join(a.out, sub))

    n_files = max(1, round(SMALL_FILES * a.scale))
    small = max(n_files, round(SMALL_BYTES * a.scale))
    sql = max(1, round(SQL_BYTES * a.scale))
    rnd = max(1, round(RANDOM_BYTES * a.scale))

    # Independent generators per part: changing one part does not change the others.
    vocab, cum = make_vocab(random.Random(a.seed), 20_000)
    t0 = time.time()
    rng = random.Random(a.seed + 1)
    gen_small(rng, Words(rng, vocab, cum), a.out, n_files, small, pool_lines=40_000)
    t1 = time.time()
    rng = random.Random(a.seed + 2)
    gen_sql(rng, Words(rng, vocab, cum), os.path.join(a.out, "db", "dump.sql"), sql)
    t2 = time.time()
    gen_random(random.Random(a.seed + 3), os.path.join(a.out, "uploads", "media.bin"), rnd)
    t3 = time.time()

    # Directory times last: creating files inside changed them.
    for dirpath, _, _ in sorted(os.walk(a.out), key=lambda e: -len(e[0])):
        set_times(dirpath)
    print(
        f"gentree: {n_files} small files ({small} bytes) in {t1 - t0:.1f}s, "
        f"SQL {sql} bytes in {t2 - t1:.1f}s, random {rnd} bytes in {t3 - t2:.1f}s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
