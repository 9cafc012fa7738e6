"""List the image files of class folders, entering each real folder at most once per dataset.

torchvision's ``make_dataset`` (0.29) walks with ``os.walk(followlinks=True)``. A link to a parent
folder such as ``train/dog/loop -> train`` then repeats the tree until Linux stops resolving the
nested links (40 levels). Each image is listed about 40 times, other classes' images are labelled
"dog", and the same image lands in train and test. ``FolderWalk`` still follows a linked class
folder, or a link inside a class folder that leads outside the tree, because datasets are often
assembled that way. It skips a link that leads to a split or class folder of the tree, or to a
folder it has already listed. Symbolic links to image files are listed like other files.
"""

import logging
import os

from core.datasets.images import is_image_name

logger = logging.getLogger(__name__)

#: Skipped folders named one by one in the log before the rest are only counted.
_LOGGED_SKIPS = 10


def _folder_id(path: str) -> tuple:
    """Return ``(st_dev, st_ino)`` of the folder ``path`` leads to, following links."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


class FolderWalk:
    """Lists image files under the class folders of one image tree, each real folder once.

    ``split_folders`` are the folders whose subfolders are classes (``train``, ``val``, ...).
    They, their real class folders and ``root`` are reserved from the start, so a link to any of
    them is skipped wherever it is found. ``skipped`` collects ``{"path", "target"}`` for every
    folder left out, with ``path`` relative to ``root``.
    """

    def __init__(self, root: str, split_folders: list):
        self.root = root
        self.reserved = {_folder_id(root)}
        for folder in split_folders:
            self.reserved.add(_folder_id(folder))
            with os.scandir(folder) as entries:
                self.reserved.update(_folder_id(entry.path) for entry in entries
                                     if entry.is_dir(follow_symlinks=False))
        self.walked = set()
        self.skipped = []

    def image_files(self, class_folder: str) -> list:
        """Return the sorted paths of the image files under ``class_folder``, following allowed links.

        A class folder that is itself a link is skipped (empty list) when it leads to a reserved
        or already listed folder, e.g. ``test/dog -> ../train/dog``.
        """
        start = _folder_id(class_folder)
        if os.path.islink(class_folder) and (start in self.reserved or start in self.walked):
            self._skip(class_folder)
            return []
        self.walked.add(start)

        found = []
        for folder, subfolders, files in os.walk(class_folder, followlinks=True):
            subfolders[:] = [name for name in sorted(subfolders) if self._enter(os.path.join(folder, name))]
            found.extend(os.path.join(folder, name) for name in files if is_image_name(name))
        return sorted(found)

    def _enter(self, folder: str) -> bool:
        """Return whether to walk ``folder``, a subfolder of a class folder, and mark it as walked."""
        try:
            folder_id = _folder_id(folder)
        except OSError:
            return True  # os.walk skips a folder it cannot list, without an error.
        is_link = os.path.islink(folder)
        if folder_id in self.walked or (is_link and folder_id in self.reserved):
            self._skip(folder)
            return False
        self.walked.add(folder_id)
        return True

    def _skip(self, folder: str) -> None:
        self.skipped.append({"path": os.path.relpath(folder, self.root).replace(os.sep, "/"),
                             "target": os.path.realpath(folder)})

    def log_skipped(self, name: str) -> None:
        """Log one warning per skipped folder (the first ``_LOGGED_SKIPS``), then a count of the rest."""
        for entry in self.skipped[:_LOGGED_SKIPS]:
            logger.warning("dataset %s: skipped the folder %s because it leads to %s, a split or class folder of "
                           "the dataset or a folder already listed (a link loop or a second link to one folder); "
                           "remove the link, or link a folder outside the dataset", name, entry["path"],
                           entry["target"])
        if len(self.skipped) > _LOGGED_SKIPS:
            logger.warning("dataset %s: skipped %d more linked folders for the same reason (listed in the run's "
                           "dataset diagnostics)", name, len(self.skipped) - _LOGGED_SKIPS)
