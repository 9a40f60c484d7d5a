"""Staged activation on the device: a new release first answers copies of field requests
beside the active one (shadow), then a growing share of them (ramp), and only then becomes
active (the installer's switch) and enters probation. `record` is what the state dir keeps,
`lifecycle` the installer's side (under the device lock), `stager` the inference server's.
"""
