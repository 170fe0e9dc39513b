"""A folder of mixed image files as users hold them, for the folder tests (Pillow only)."""
import io
import os

import numpy as np

BAD = ('broken/truncated.jpg', 'broken/garbage.png', 'phone/IMG_0001.heic', 'notes.txt')
ROTATED = 'phone/rotated.jpg'
TRANSPARENT = 'web/transparent.png'
CLASSES = ('a', 'b', 'c', 'd', 'e')


def _image(rng, kind):
    from PIL import Image
    h, w = (int(x) for x in rng.integers(12, 48, 2))
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    if kind == 'L':
        return image.convert('L')
    if kind == 'RGBA':
        alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
        return Image.fromarray(np.dstack([rgb, alpha]), 'RGBA')
    if kind == 'P':
        return image.quantize(16)
    if kind == 'CMYK':
        return image.convert('CMYK')
    return image


# (extension, Pillow format, mode)
KINDS = [('jpg', 'JPEG', 'RGB'), ('jpeg', 'JPEG', 'L'), ('jpg', 'JPEG', 'CMYK'), ('png', 'PNG', 'RGB'),
         ('png', 'PNG', 'RGBA'), ('png', 'PNG', 'P'), ('webp', 'WEBP', 'RGB'), ('webp', 'WEBP', 'RGBA'),
         ('bmp', 'BMP', 'RGB'), ('gif', 'GIF', 'P')]


def upright():
    """A tall image: red top half, blue bottom half (what the rotated JPEG must decode to)."""
    a = np.zeros((40, 24, 3), np.uint8)
    a[:20, :, 0] = 255
    a[20:, :, 2] = 255
    return a


def write_mixed(root, count=300, seed=0, classes=None):
    """`count` files under `root`: images of every KIND in nested folders (class sub-folders when
    `classes`), the EXIF-rotated JPEG, the transparent PNG and the BAD files. Returns the good paths."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    good = []

    def put(rel, data):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)

    def encode(image, fmt):
        buf = io.BytesIO()
        image.save(buf, fmt)
        return buf.getvalue()

    if classes is None:
        buf = io.BytesIO()  # stored sideways, EXIF orientation 6: shown turned 90 degrees clockwise
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(upright()).transpose(Image.Transpose.ROTATE_90).save(buf, 'JPEG', quality=95, exif=exif)
        put(ROTATED, buf.getvalue())
        clear = np.zeros((16, 16, 4), np.uint8)  # fully transparent black: white after compositing
        put(TRANSPARENT, encode(Image.fromarray(clear, 'RGBA'), 'PNG'))
        jpeg = encode(Image.fromarray(upright()), 'JPEG')
        put(BAD[0], jpeg[:len(jpeg) // 2])
        put(BAD[1], rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
        put(BAD[2], b'\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic' + bytes(200))
        put(BAD[3], b'not an image\n')
        good += [ROTATED, TRANSPARENT]
    n = count - len(good) - (len(BAD) if classes is None else 0)
    for i in range(n):
        ext, fmt, mode = KINDS[i % len(KINDS)]
        folder = f'{classes[i % len(classes)]}' if classes else f'set{i % 3}/{"deep/" if i % 2 else ""}'
        rel = f'{folder.rstrip("/")}/img{i:03d}.{ext}'
        put(rel, encode(_image(rng, mode), fmt))
        good.append(rel)
    return sorted(good)
