"""Training: the FaceNet triplet loss, online triplet mining, and harmonic model upgrades.

=====================  ===============================================================
``triplet``            the loss, semi-hard / batch-hard mining, the harmonic loss
``sampler``            P people x K photos batches
``split``              freeze SFace up to a layer; cache the frozen trunk's output
``data``               a folder labelled by subfolders -> aligned crops (cached)
``validation``         person-disjoint split, pairs protocol, best threshold
``loop``               the training loop (:func:`~facesearch.train.loop.train`)
``run``                ``facesearch train`` as a library call (folder in, model file out)
=====================  ===============================================================

Model files are written and read by :mod:`facesearch.models.modelfile`. Submodules import
torch; import them directly (this package's ``__init__`` stays light).
"""
