"""Installing on the device: verify, check compatibility, smoke-test, switch, roll back,
recover, one channel at a time under the device lock.

    installer      install(), rollback(), recover(): the steps in order, journaled
    states         the decisions, as pure functions over records (the commit point named)
    channel_store  the disk work on one channel's directory (ChannelStore)
    journal        how far an install or rollback got, for recovery after a crash
    smoketest      run the bundle's models on its sample inputs (in-process or in a child)
    handoff        a passing smoke test's session, handed to the server of the same process
    compat         does a bundle fit this device (pure checks over DeviceFacts)
    facts          gather those facts: identity, clock, runtimes, free disk, agent version
    lock           the device lock, across processes
    history        the release history: activations, refusals, rollbacks, recoveries

Nothing is imported here, so `python -m satchel.agent.install.smoketest` (the child smoke
test) does not load the installer first, and the installer itself imports the signature
checks, zstandard and the runtimes only where an install uses them: recovery and rollback
(`satchel-agent status`, `rollback`) load none of them.
"""
