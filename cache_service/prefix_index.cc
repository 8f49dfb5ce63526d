// PrefixIndex is header-only (a thin map kept inline for the hot lookup path); this
// translation unit only anchors it in kvpool_manager_core. See prefix_index.h.
#include "cache_service/prefix_index.h"
