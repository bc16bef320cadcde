"""What a student reads: VGG16 backbone, FC -> conv, bilinear upsampling, the FCN models and
their geometry. Imports nothing else from fcn_lesson.
"""
