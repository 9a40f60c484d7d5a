"""Test factory: what tests build to feed Satchel, honest or hostile. One module per kind of
thing, imported directly (this package re-exports nothing):

- `keys`: key pairs and signed trust roots, as `satchel keys init` lays them out; rotations.
- `bundles`: honest signed bundles by `bundles.pack.write_bundle`, and re-signed variants.
- `tar`: a ustar encoder and parser of our own, and member-by-member archive surgery.
- `spans`: which region every byte of a bundle file belongs to; single-byte edits.
- `zstd_frames`: zstd frames for payloads, bombs included.
- `trees`: snapshots of directory trees, to prove a refusal changed nothing.
- `device`: a device sandbox that verifies and unpacks bundles, and the refusal contract.
- `smoke_tested`: bundles of a real model with a smoke test it passes (or fails on accuracy).
- `model_makers`: small ONNX and TFLite MLPs, sample inputs, quantization.
- `outcome`: what a CLI invocation did, and the exit-code contract it must keep.

Honest bundles are made exactly as `satchel bundle build` makes them; hostile ones by the
surgery of `tar` and `spans`, which never go through the code under test.
"""
