// modelport: the runtime sources include "src/support/bytes_io.h"; the header itself ships in
// the apache-tvm-tirx wheel as <tvm/support/bytes_io.h>.
#pragma once
#include <tvm/support/bytes_io.h>
