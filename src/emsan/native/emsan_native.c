/* emsan's native hot paths. Everything here is called by Unicorn directly; Python is
 * reached only when something is wrong. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef int (*reg_read_fn)(void *, int, void *);
typedef int (*reg_write_fn)(void *, int, const void *);
typedef int (*mem_read_fn)(void *, uint64_t, void *, size_t);
typedef int (*mem_write_fn)(void *, uint64_t, const void *, size_t);
typedef int (*emu_stop_fn)(void *);
typedef int (*hook_add_fn)(void *, size_t *, int, void *, void *, uint64_t, uint64_t, ...);

static emsan_api api;

EXPORT void emsan_set_api(const emsan_api *a) { api = *a; }

EXPORT int emsan_hook_add(void *uc, size_t *hh, int type, void *cb, void *ud, uint64_t begin, uint64_t end)
{
    return ((hook_add_fn)api.uc_hook_add)(uc, hh, type, cb, ud, begin, end);
}

EXPORT void emsan_count_insn_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)uc; (void)address; (void)size;
    ++*(uint64_t *)ud;
}
