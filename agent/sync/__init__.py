"""Keeping in step with the manager, over the LAN or on a USB stick.

    checkin         the check-in loop of `satchel-agent run`: report, learn offers, install
    client          the LAN client: enrollment, check-in, trust roots, resumable downloads
    enroll          `satchel-agent enroll`: a one-time token for the LAN credential
    credentials     the device's own key and its LAN credential
    usb             USB sneakernet: verify a stick's plan, install from it, write the report
    trust_roots     the trust root the device verifies against, walked forward by rotation
    install_events  install a bundle a transport brought, queueing the events of the install
    report          what the device reports: status, health and events (the check-in body)
"""
