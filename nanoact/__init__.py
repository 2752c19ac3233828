"""nanoact: activation-function ablations on small character-level language models.

Importing nanoact does no work: no seeding, no tracking URIs, no logging handlers, no output.
"""

__version__ = "0.1.0"
