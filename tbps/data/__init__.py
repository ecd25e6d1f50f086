"""What training and evaluation read: the training loader, image transforms, evaluation's images, caption cleaning."""
