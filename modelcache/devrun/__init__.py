"""`python -m modelcache.devrun` (what `make run` starts): the whole system on one machine.

A local Hub origin, a coordinator on the embedded store and three agents run as real processes
under `./.run/`, exactly as they would run apart; this package only starts them, talks to them
over HTTP like a user would, and stops them. It never imports the services themselves.
"""
