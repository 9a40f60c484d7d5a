"""`make demo`: Satchel's whole story on one machine, with real processes.

Keys, a model trained and quantized here, a signed bundle, a manager, three devices (two on
the LAN, one reachable only by USB stick), a rollout in waves, predictions served by the
devices, then a bad release refused by its canary and a deployment halting on its own.
"""
