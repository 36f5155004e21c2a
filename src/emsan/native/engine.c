/* The engine's entry points, handed over by machine/native.py (see engine.h), and the two
 * callbacks emsan registers with Unicorn from Python that are not a detector's. */
#include "engine.h"

#define EXPORT __attribute__((visibility("default")))

emsan_api emsan_uc;

typedef int (*engine_hook_add_fn)(void *, size_t *, int, void *, void *, uint64_t, uint64_t, ...);

EXPORT void emsan_set_api(const emsan_api *a) { emsan_uc = *a; }

EXPORT int emsan_hook_add(void *uc, size_t *hh, int type, void *cb, void *ud, uint64_t begin, uint64_t end)
{
    return ((engine_hook_add_fn)emsan_uc.uc_hook_add)(uc, hh, type, cb, ud, begin, end);
}

/* The benchmarks' instruction counter: one increment per executed instruction. */
EXPORT void emsan_count_insn_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)uc; (void)address; (void)size;
    ++*(uint64_t *)ud;
}
