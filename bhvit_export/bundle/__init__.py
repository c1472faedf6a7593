"""Deploy bundles: the folder (or .tar) that ``compile`` writes and ``verify`` checks and runs.

``manifest`` is the format (what is in a bundle and how it is checked, without loading anything);
``writer`` assembles a bundle atomically; ``archive`` packs/unpacks the optional ``.tar`` form.
This package imports neither torch nor onnx nor TVM: a device that only verifies needs numpy.
"""
