// One registration function per built-in stage file. register_builtin_stages calls each of
// them by name, so a missing stage is a link error, never a silently empty registry.
#pragma once

#include "pipe/registry.h"

namespace pipeline::stages {
// The `interpolation` parameter of decode and resize: nearest | bilinear | area | bicubic,
// read as the cv::InterpolationFlags value (defined in decode.cpp).
Choice<int> interpolation_param(int default_filter);

void register_fashion_mnist(Registry& r);
void register_folder(Registry& r);
void register_csv(Registry& r);
void register_decode(Registry& r);
void register_augment(Registry& r);
void register_convbase(Registry& r);
void register_resize(Registry& r);
void register_concat(Registry& r);
void register_preview(Registry& r);
void register_dense_head(Registry& r);
void register_train_base(Registry& r);
}  // namespace pipeline::stages
