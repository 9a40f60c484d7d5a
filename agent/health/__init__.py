"""Inference health on the device: counted per release, kept durably, sampled for the manager.

    stats    HealthStats and HealthBook: counters and latency histogram per release
    store    the durable, bounded per-minute history (STATE/health/)
    samples  one `health` event per serving release and interval, for the manager
"""
