"""Where result images are copied before the upstream's URLs expire."""

from .local import StorageError, image_path, job_dir, store_image

__all__ = ["StorageError", "image_path", "job_dir", "store_image"]
