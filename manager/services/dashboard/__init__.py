"""Read models of the web dashboard, one module per page: nothing here changes the database.

`fleet` (the overview), `device` (one device), `bundles` (the list and one bundle),
`deployments` (the list and its form), `tokens`; beside them what several pages share:
`states` (what a device's dashboard state is), `classify` (judging devices from the
database), `health` (health over time), `figures` (event figures as text).
"""
