"""`make bench`: speed and memory figures as JSON (`python -m bench`), and one-off studies."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures" / "speech"  # the shared speech fixtures
