"""The materialisation cache: castore inputs written once as host trees that builds share.

``cache`` holds the trees and their references and eviction, ``blob_files``
the verified blob inodes the trees hardlink, and ``tree_shape`` what a tree
expands to before it is written and what one already written weighs.
"""
