"""`kamal_imagewoof`: Imagewoof (imagewoof2, official train/val split) read in place from
`imagewoof.tar.gz` in the manual dir.

Archive layout: `imagewoof/{train,val}/<wnid>/<stem>.jpg`. The images have shorter side 160 px and
keep their aspect ratio (longer side 160-615 px); they are stored as they are (variable size, JPEG
bytes unchanged) -- no fixed-size config. `kamal_jax.data.datasets.load` therefore needs
`image_size=(h, w)`; it center-crops to the target aspect ratio and resizes (antialiased bilinear),
e.g. `image_size=(128, 128)` gives the usual center crop of the 160 px side resized to 128.

Labels: id = position of the wnid in sorted order, name = ImageNet breed name (n02093754 is Border
terrier and n02096294 Australian terrier, as ImageNet says). Splits: train 9025, val 3929; the build
fails if the counts differ. Known: 3 byte-identical image pairs with different labels come with the
source (docs/DATA.md, 'The benchmark archives', says what it holds).
"""
import tensorflow_datasets as tfds

from kamal_jax.data.builders._common import ClassFolderArchiveBuilder

WNIDS = ('n02086240', 'n02087394', 'n02088364', 'n02089973', 'n02093754',
         'n02096294', 'n02099601', 'n02105641', 'n02111889', 'n02115641')
BREEDS = ('Shih-Tzu', 'Rhodesian ridgeback', 'beagle', 'English foxhound', 'Border terrier',
          'Australian terrier', 'golden retriever', 'Old English sheepdog', 'Samoyed', 'dingo')
assert list(WNIDS) == sorted(WNIDS)


class KamalImagewoof(ClassFolderArchiveBuilder):
    """Imagewoof (10 dog breeds, shorter side 160 px) from the manual archive imagewoof.tar.gz."""

    name = 'kamal_imagewoof'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release: images stored as they are (shorter side 160).'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = 'Place imagewoof.tar.gz (docs/DATA.md, "The benchmark archives", says what it holds) in manual_dir.'
    ARCHIVE = 'imagewoof.tar.gz'
    PREFIX = 'imagewoof'
    SPLITS = ('train', 'val')
    CLASS_DIRS = WNIDS
    CLASS_NAMES = BREEDS
    IMAGE_SHAPE = (None, None, 3)
    EXPECTED_COUNTS = {'train': 9025, 'val': 3929}

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=self._features(),
            supervised_keys=('image', 'label'),
            homepage='https://github.com/fastai/imagenette',
        )
