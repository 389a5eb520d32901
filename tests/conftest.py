import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# flashcore generate / eval keep a persistent compilation cache (flashcore.app.engine); tests
# run without one unless a test sets its own folder
os.environ["FLASHCORE_COMPILE_CACHE"] = "off"
