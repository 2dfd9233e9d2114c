"""One worker process: the apply, hydrate and act stages, their threads and signals."""
