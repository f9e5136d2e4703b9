"""Offline trainers of the embedders' models: DenseNet-BC on image folders, the seq2seq translator."""
