"""genreclf: distributed music-genre classification on Spark (featurize, train, score)."""

import warnings

__version__ = "0.1.0"

# petastorm 0.13.1 under pyarrow 14 emits FutureWarnings about the legacy ParquetDataset
# API on every read; they say nothing actionable to our users and drown the logs.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
warnings.filterwarnings("ignore", category=FutureWarning, message=r".*pyarrow.*")
