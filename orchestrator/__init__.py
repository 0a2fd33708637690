"""The Beyond the Box orchestrator: runs roles in any mix of languages and checks what they saw."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
