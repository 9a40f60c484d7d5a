"""Device check-ins: state, health and events in; what to install out.

One package, its layers one way (top to bottom, held by `make lint`):

- `route`: the WSGI route in front of Flask that answers unchanged LAN check-ins
- `framing`: the HTTP framing the route and the Flask view (`api/devices.py`) share
- `lan`: a LAN check-in, on the fast path when it applies, else on the full one
- `fast`: the fast path, one statement for a device whose state did not change
- `record`: the full path, shared with USB reports: events, the device row, progress
- `device_row`: which report's state wins and when a device was last seen, as SQL both
  paths evaluate
- `answer`: what the device should install, and the answer it is sent
- `parse`: the request, parsed and validated
- `driver`: the fast path's statements, compiled once, run on the driver's own connection

The released-targets query and the health-policy loader are the deployment engine's too:
they live in `services/targets.py`.
"""
