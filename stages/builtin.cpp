#include "builtin.h"

namespace pipeline {

void register_builtin_stages(Registry& r) {
  stages::register_fashion_mnist(r);
  stages::register_folder(r);
  stages::register_csv(r);
  stages::register_decode(r);
  stages::register_augment(r);
  stages::register_convbase(r);
  stages::register_resize(r);
  stages::register_concat(r);
  stages::register_preview(r);
  stages::register_dense_head(r);
  stages::register_train_base(r);
}

}  // namespace pipeline
