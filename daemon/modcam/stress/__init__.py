"""modcam-stress: hot-plug stress of modcamd with concurrent clients.

plan.py (the seeded action plan), validate.py (is a captured DNG the frame
it claims to be), clients.py (the K client threads), runner.py (the cycles
and the checks after each), report.py (JSON, Markdown, PNG plots), cli.py.
"""
