// placeholder
#include "envd/store/blob_store.hpp"
