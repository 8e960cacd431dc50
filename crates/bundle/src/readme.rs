//! The README.txt every bundle carries: how a person checks and opens it with stock tools.

use crate::layout::{
    BUNDLE_JSON, FILES_INDEX, FILES_PAYLOAD, FILES_SHA256, MANIFEST, SIGNATURE,
    SIGNATURE_NAMESPACE, TAG_MANIFEST,
};

pub fn render(tenant: &str, bundle_id: &str, created_at: &str, signer: &str) -> String {
    format!(
        "\
This is a baluchon bundle: the files of tenant \"{tenant}\", packed to move to another host.
Bundle {bundle_id}, created {created_at}, signed by the key {signer}.

It is a BagIt 1.0 bag (RFC 8493) in a plain tar. You need no baluchon to check or open it:
tar, zstd, sha256sum and ssh-keygen (OpenSSH 8.1 or later) are enough.

  mkdir bag && tar -xf BUNDLE.tar -C bag && cd bag

1. Check the signature. Put the provider's public key, obtained from them directly, in a
   file allowed_signers as one line:  provider@example.org ssh-ed25519 AAAA...
     ssh-keygen -Y verify -f allowed_signers -I provider@example.org \\
       -n {SIGNATURE_NAMESPACE} -s {SIGNATURE} < {TAG_MANIFEST}
2. Check every other file against the signed lists:
     sha256sum --strict -c {TAG_MANIFEST} && sha256sum --strict -c {MANIFEST}
3. Look inside, then extract into an empty directory:
     zstd -t {FILES_PAYLOAD}
     zstd -dc {FILES_PAYLOAD} | tar -tvf -
     mkdir tree && zstd -dc {FILES_PAYLOAD} | tar -xpf - -C tree
4. Optionally check every extracted file:
     zstd -dc {FILES_SHA256} > sums.txt
     [ ! -s sums.txt ] || (cd tree && sha256sum --strict -c ../sums.txt)

{BUNDLE_JSON} describes the bundle; {FILES_INDEX} (read it with zstd -dc) lists every entry
of the tree, one JSON object per line, with its type, mode, owner, times and sha256,
including the entries that could not be archived (sockets, FIFOs, devices). The format is specified in the baluchon
documentation, docs/bundle-format.md.
"
    )
}
