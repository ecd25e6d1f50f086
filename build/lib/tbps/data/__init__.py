"""What training and evaluation read: the training loader, image transforms, caption cleaning."""
