"""I/O: every user location (storage), the output lock, input catalogues, the Spark session and progress."""
