/* Entry points shared by every mode: the Unicorn API table and the benchmark counter. */
#include "internal.h"

emsan_api emsan_uc;

typedef int (*hook_add_fn)(void *, size_t *, int, void *, void *, uint64_t, uint64_t, ...);

EXPORT void emsan_set_api(const emsan_api *a) { emsan_uc = *a; }

EXPORT int emsan_hook_add(void *uc, size_t *hh, int type, void *cb, void *ud, uint64_t begin, uint64_t end)
{
    return ((hook_add_fn)emsan_uc.uc_hook_add)(uc, hh, type, cb, ud, begin, end);
}

EXPORT void emsan_count_insn_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)uc; (void)address; (void)size;
    ++*(uint64_t *)ud;
}
