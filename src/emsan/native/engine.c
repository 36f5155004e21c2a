/* The engine's entry points, handed over by machine/native.py (see engine.h), and the two
 * callbacks emsan registers with Unicorn from Python that are not a detector's. */
#include <execinfo.h>
#include <string.h>
#include "engine.h"

#define EXPORT __attribute__((visibility("default")))

emsan_api emsan_uc;

EXPORT void emsan_set_api(const emsan_api *a) { emsan_uc = *a; }

EXPORT int emsan_hook_add(void *uc, size_t *hh, int type, void *cb, void *ud, uint64_t begin, uint64_t end)
{
    return ((engine_hook_add_fn)emsan_uc.uc_hook_add)(uc, hh, type, cb, ud, begin, end);
}

struct engine_regs engine_regs;

void engine_regs_forget(void) { memset(&engine_regs, 0, sizeof engine_regs); }

uint64_t *engine_reg_lookup(void *uc, int id, int is_write)
{
    if (engine_regs.uc != uc) {                  /* another engine: forget the last one's places */
        engine_regs_forget();
        engine_regs.uc = uc;
    }
    if ((unsigned)id >= ENGINE_REG_IDS || !emsan_uc.uc_emsan_reg_ptr) return NULL;
    engine_regs.p[is_write][id] = ((engine_reg_ptr_fn)emsan_uc.uc_emsan_reg_ptr)(uc, id, is_write);
    engine_regs.known[is_write][id] = 1;
    return engine_regs.p[is_write][id];
}

EXPORT int emsan_block_filter(void *uc, size_t hook, void *filter, void *ud)
{
    return ((engine_block_filter_fn)emsan_uc.uc_emsan_block_filter)(uc, hook, filter, ud);
}

/* The benchmarks' instruction counter: one increment per executed instruction. */
EXPORT void emsan_count_insn_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)uc; (void)address; (void)size;
    ++*(uint64_t *)ud;
}

/* ---- the PC of an access seen inside a memory callback ------------------------------------------ */

/* Unicorn syncs the PC only at block exits. QEMU's cpu_restore_state() recovers it from the
 * host return address into the translated code, which is the outermost frame the unwinder
 * reaches from here (translated code has no unwind tables). That frame is the helper's return
 * address: either in the block's code, right after the access (the PC is then that of the
 * access or the one before), or in the block's out-of-line slow path, which ends by jumping
 * back to the block's code (an x86-64 host's first `jmp rel32` after the return address).
 * Each gives a candidate; the caller keeps the one whose instruction covers the address. */
typedef void *(*get_cpu_fn)(void *uc, int index);
typedef _Bool (*restore_fn)(void *cpu, uintptr_t host_pc, _Bool will_exit);

static int restore_at(void *uc, const engine_pc_recovery *r, void *cpu, uintptr_t host_pc, int pc_reg, uint64_t *pc)
{
    if (!((restore_fn)r->restore)(cpu, host_pc, 0)) return 0;
    *pc = reg_get(uc, pc_reg);
    return 1;
}

/* QEMU's CPUState of the engine (index 0, or -1: x86 CPUs have no index); NULL without the internals. */
static void *engine_cpu(void *uc, const engine_pc_recovery *r)
{
    if (!r->get_cpu || !r->restore) return NULL;
    void *cpu = ((get_cpu_fn)r->get_cpu)(uc, 0);
    return cpu ? cpu : ((get_cpu_fn)r->get_cpu)(uc, -1);
}

int engine_pc_at(void *uc, const engine_pc_recovery *r, uintptr_t host_pc, int pc_reg, uint64_t *pc)
{
    void *cpu = engine_cpu(uc, r);
    return cpu && restore_at(uc, r, cpu, host_pc, pc_reg, pc);
}

int engine_access_pcs(void *uc, const engine_pc_recovery *r, int pc_reg, uint64_t *out, int max)
{
    void *cpu = max < 1 ? NULL : engine_cpu(uc, r);
    if (!cpu) return 0;
    void *frames[48];
    int n = backtrace(frames, 48), got = 0;
    if (n < 1) return 0;
    uintptr_t ret = (uintptr_t)frames[n - 1];
    if (restore_at(uc, r, cpu, ret, pc_reg, &out[got])) got++;
#if defined(__x86_64__)
    const uint8_t *code = (const uint8_t *)ret;
    for (int i = 0; i < 48 && got < max; i++) {
        if (code[i] != 0xE9) continue;
        int32_t rel;
        memcpy(&rel, code + i + 1, 4);
        uintptr_t back = ret + (uintptr_t)i + 5 + (uintptr_t)(intptr_t)rel;
        if (back < ret && ret - back < 0x10000 && restore_at(uc, r, cpu, back, pc_reg, &out[got])) {
            got++;
            break;
        }
    }
#endif
    return got;
}
