"""behaviorgpt: learn what users want from what they do.

Spark jobs turn raw behaviour events into token sequences, a distributed multi-task GPT learns
from them, and a Spark scoring job writes each user's interest profile to Delta Lake.
"""

__version__ = "0.1.0"
