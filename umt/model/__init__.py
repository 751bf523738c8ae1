"""UMT models: the student video ViT (registered in timm), the frozen CLIP teacher and the UMA heads.

Importing this package registers the ``umt_vit_*`` names in timm's registry; it does no I/O and no CUDA init.
"""

from umt.model.heads import UMAHeads, UMTPretrain
from umt.model.student import STUDENT_ARCHS, UMTStudent, sincos_pos_table
from umt.model.teacher import TEACHER_CONFIGS, CLIPTeacher, TeacherOutput, build_clip, load_clip_weights

__all__ = ["STUDENT_ARCHS", "TEACHER_CONFIGS", "CLIPTeacher", "TeacherOutput", "UMAHeads", "UMTPretrain",
           "UMTStudent", "build_clip", "load_clip_weights", "sincos_pos_table"]
