"""``tbps synth``: the embedded synthetic dataset, written in a published dataset's layout.

generate     the dataset plan and the folder writer (``tbps synth``)
vocabulary   colours, garments, bags and the words for them
people       one identity's fixed attributes, drawn from the vocabulary
render       one photo of a person (PIL)
captions     one description of a person, in a dataset's annotation style
"""
