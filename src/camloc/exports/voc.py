"""Pascal VOC XML, one file per image (``voc/<name>.xml``): ``folder``, ``filename`` (the
image's path relative to the images' common folder), ``path`` (absolute), ``size``, and per
box an ``object`` with ``name`` (the model's class name) and ``bndbox``. VOC pixels are
1-based and inclusive, so camloc's pixel edges ``[xmin, ymin, xmax, ymax]`` are written as
``xmin + 1, ymin + 1, xmax, ymax`` (what the VOC devkit, supervision and camloc's own
reader expect). An image without boxes gets a file without objects.

>>> from camloc.exports.registry import ExportOptions, export_set
>>> data = export_set([{"image": "/d/x.png", "width": 10, "height": 8, "error": None,
...     "cams": [{"index": 7, "label": "cock", "score": 0.9, "boxes": [[1, 2, 5, 6]]}]}])
>>> [(path, xml)] = write_voc(data, ExportOptions())
>>> path, [line.strip() for line in xml.decode().splitlines() if line.strip().startswith(("<x", "<y"))]
('voc/x.xml', ['<xmin>2</xmin>', '<ymin>3</ymin>', '<xmax>5</xmax>', '<ymax>6</ymax>'])
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree

from .registry import ExportFiles, ExportFormat, ExportImage, ExportOptions, ExportSet, register_export

FOLDER = "voc"


def _add(parent: ElementTree.Element, tag: str, text: object) -> ElementTree.Element:
    child = ElementTree.SubElement(parent, tag)
    child.text = str(text)
    return child


def voc_xml(image: ExportImage, root: str) -> bytes:
    """The VOC annotation of one image."""
    annotation = ElementTree.Element("annotation")
    _add(annotation, "folder", os.path.basename(root) or root)
    _add(annotation, "filename", image.relative)
    _add(annotation, "path", image.path)
    source = ElementTree.SubElement(annotation, "source")
    _add(source, "database", "camloc")
    size = ElementTree.SubElement(annotation, "size")
    _add(size, "width", image.width)
    _add(size, "height", image.height)
    _add(size, "depth", 3)
    _add(annotation, "segmented", 0)
    for detection in image.detections:
        xmin, ymin, xmax, ymax = detection.box
        item = ElementTree.SubElement(annotation, "object")
        _add(item, "name", detection.label)
        _add(item, "pose", "Unspecified")
        _add(item, "truncated", 0)
        _add(item, "difficult", 0)
        box = ElementTree.SubElement(item, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (xmin + 1, ymin + 1, xmax, ymax), strict=True):
            _add(box, tag, value)
    ElementTree.indent(annotation, space="  ")
    return ElementTree.tostring(annotation, encoding="utf-8", xml_declaration=True) + b"\n"


def write_voc(data: ExportSet, options: ExportOptions, folder: str = ".") -> ExportFiles:
    for image in data.images:
        yield f"{FOLDER}/{image.name}.xml", voc_xml(image, data.root)


register_export(ExportFormat("voc", write_voc, f"{FOLDER}/", "Pascal VOC XML, one file per image",
                             owned=((FOLDER, "*.xml"),)))
