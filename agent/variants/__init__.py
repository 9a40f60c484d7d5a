"""Variants on the device: several models of one release, the one that answers picked by the
device's state and by each request (docs/VARIANTS.md).

`install` judges every variant's smoke test (a failing variant is dropped, the release
activates when its default passes); `state` reads battery, temperature, load and memory;
`select` is the hysteretic choice and the choice by request; `serving` keeps every ready
variant of a serving release loaded and switches between them; `status` is what
`satchel-agent status --json` says of them. Nothing here imports numpy or a runtime at import.
"""
