/* emsan's native API: the cffi cdef reads this file, and the C sources include it.
 * Plain declarations only (cffi's parser takes no preprocessor logic beyond integer #defines). */

typedef struct emsan_api {
    void *uc_reg_read;      /* uc_err uc_reg_read(uc_engine *, int, void *) */
    void *uc_reg_write;     /* uc_err uc_reg_write(uc_engine *, int, const void *) */
    void *uc_mem_read;      /* uc_err uc_mem_read(uc_engine *, uint64_t, void *, size_t) */
    void *uc_mem_write;     /* uc_err uc_mem_write(uc_engine *, uint64_t, const void *, size_t) */
    void *uc_emu_stop;      /* uc_err uc_emu_stop(uc_engine *) */
    void *uc_hook_add;      /* uc_err uc_hook_add(uc_engine *, size_t *, int, void *, void *, uint64_t, uint64_t, ...) */
    void *uc_ctl;           /* uc_err uc_ctl(uc_engine *, int, ...) */
    void *uc_emsan_host_ptr;    /* void *(uc_engine *, uint64_t, size_t, bool): engine/patches/005 */
    void *uc_emsan_shadow_check;    /* uc_err (uc_engine *, uint64_t, uint64_t, const uint8_t *, uint8_t, cb, void *): 011 */
    void *uc_emsan_block_filter;    /* uc_err (uc_engine *, uc_hook, filter, void *): engine/patches/012 */
    void *uc_emsan_reg_ptr;         /* void *(uc_engine *, int, bool): engine/patches/013 */
    void *uc_emsan_tag_check;       /* uc_shadow_check's arguments, for pointer tags: engine/patches/015 */
    void *uc_emsan_tlb_flush_page;  /* uc_err (uc_engine *, uint64_t): engine/patches/016 */
    void *uc_emsan_hook_gate;       /* uc_err (uc_engine *, uc_hook, uint64_t *, int64_t, uint64_t, uint64_t): 017 */
} emsan_api;

void emsan_set_api(const emsan_api *api);
int emsan_hook_add(void *uc, size_t *hh, int type, void *cb, void *ud, uint64_t begin, uint64_t end);
/* Block hook `hook` called only at blocks filter(uc, address, size, ud) wants (engine/patches/012). */
int emsan_block_filter(void *uc, size_t hook, void *filter, void *ud);

/* Counting hook used by the benchmarks: one increment per executed instruction. */
void emsan_count_insn_cb(void *uc, uint64_t address, uint32_t size, void *ud);

/* ---- the runtime (runtime.c, calls.c, depot.c, scs.c, unwind.c): one per engine -------------
 * What every detector shares: engine access, the registers it needs, the stack depot and
 * collectors, and the queue of errors Python turns into reports. */

/* Functions emsan stands in for (one hook per entry point, user data = emsan_kasan_entry() or
 * emsan_kfence_entry()). */
#define EMSAN_FN_MALLOC 1
#define EMSAN_FN_FREE 2
#define EMSAN_FN_CALLOC 3
#define EMSAN_FN_REALLOC 4
#define EMSAN_FN_REALLOCARRAY 5
#define EMSAN_FN_MEMALIGN 6
#define EMSAN_FN_POSIX_MEMALIGN 7
#define EMSAN_FN_ALIGNED_ALLOC 8
#define EMSAN_FN_VALLOC 9
#define EMSAN_FN_PVALLOC 10
#define EMSAN_FN_USABLE_SIZE 11
#define EMSAN_FN_NEW 12
#define EMSAN_FN_NEW_ARRAY 13
#define EMSAN_FN_NEW_ALIGNED 14
#define EMSAN_FN_NEW_ARRAY_ALIGNED 15
#define EMSAN_FN_NEW_NOTHROW 16
#define EMSAN_FN_NEW_ARRAY_NOTHROW 17
#define EMSAN_FN_NEW_ALIGNED_NOTHROW 18
#define EMSAN_FN_NEW_ARRAY_ALIGNED_NOTHROW 19
#define EMSAN_FN_DELETE 20
#define EMSAN_FN_DELETE_ARRAY 21
#define EMSAN_FN_TAG_MEMORY 22
/* C++14 sized and C++17 aligned deallocation: the size and alignment they pass are checked */
#define EMSAN_FN_DELETE_SIZED 23
#define EMSAN_FN_DELETE_ARRAY_SIZED 24
#define EMSAN_FN_DELETE_ALIGNED 25
#define EMSAN_FN_DELETE_ARRAY_ALIGNED 26
#define EMSAN_FN_DELETE_SIZED_ALIGNED 27
#define EMSAN_FN_DELETE_ARRAY_SIZED_ALIGNED 28
/* memalign and aligned_alloc at one entry (glibc before 2.38 aliases them): memalign's rules */
#define EMSAN_FN_MEMALIGN_OR_ALIGNED_ALLOC 29
#define EMSAN_FN_STRLEN 40
#define EMSAN_FN_STRNLEN 41
#define EMSAN_FN_STRCHR 42
#define EMSAN_FN_STRRCHR 43
#define EMSAN_FN_MEMCHR 44
#define EMSAN_FN_STRCMP 45
#define EMSAN_FN_STRNCMP 46
#define EMSAN_FN_MEMCMP 47
#define EMSAN_FN_STRCPY 48
#define EMSAN_FN_STRNCPY 49
#define EMSAN_FN_STPCPY 50
#define EMSAN_FN_STRCAT 51
#define EMSAN_FN_STRNCAT 52
#define EMSAN_FN_MEMCPY 53
#define EMSAN_FN_MEMMOVE 54
#define EMSAN_FN_MEMSET 55
#define EMSAN_FN_MEMPCPY 56
#define EMSAN_FN_RAWMEMCHR 57
#define EMSAN_FN_STRCHRNUL 58
#define EMSAN_FN_MEMRCHR 59
#define EMSAN_FN_STPNCPY 60
/* The wide-character functions (WCSLEN..WCSDUP: intercept.c takes that range as wchar_t's), then
 * spans, searches, case-insensitive compares and duplicates. */
#define EMSAN_FN_WCSLEN 61
#define EMSAN_FN_WCSNLEN 62
#define EMSAN_FN_WCSCHR 63
#define EMSAN_FN_WMEMCHR 64
#define EMSAN_FN_WCSRCHR 65
#define EMSAN_FN_WCSCMP 66
#define EMSAN_FN_WCSNCMP 67
#define EMSAN_FN_WMEMCMP 68
#define EMSAN_FN_WCSCPY 69
#define EMSAN_FN_WCPCPY 70
#define EMSAN_FN_WCSNCPY 71
#define EMSAN_FN_WCPNCPY 72
#define EMSAN_FN_WCSCAT 73
#define EMSAN_FN_WCSNCAT 74
#define EMSAN_FN_WMEMCPY 75
#define EMSAN_FN_WMEMMOVE 76
#define EMSAN_FN_WMEMPCPY 77
#define EMSAN_FN_WMEMSET 78
#define EMSAN_FN_WCSDUP 79
#define EMSAN_FN_STRSPN 80
#define EMSAN_FN_STRCSPN 81
#define EMSAN_FN_STRPBRK 82
#define EMSAN_FN_STRSTR 83
#define EMSAN_FN_MEMMEM 84
#define EMSAN_FN_STRCASECMP 85
#define EMSAN_FN_STRNCASECMP 86
#define EMSAN_FN_STRDUP 87
#define EMSAN_FN_STRNDUP 88
/* _FORTIFY_SOURCE's checked variants of those (fortify.c): (..., size_t destlen) */
#define EMSAN_FN_MEMCPY_CHK 90
#define EMSAN_FN_MEMMOVE_CHK 91
#define EMSAN_FN_MEMPCPY_CHK 92
#define EMSAN_FN_MEMSET_CHK 93
#define EMSAN_FN_STRCPY_CHK 94
#define EMSAN_FN_STPCPY_CHK 95
#define EMSAN_FN_STRNCPY_CHK 96
#define EMSAN_FN_STPNCPY_CHK 97
#define EMSAN_FN_STRCAT_CHK 98
#define EMSAN_FN_STRNCAT_CHK 99
/* ... and of the wide-character ones (counts in wchar_t) */
#define EMSAN_FN_WMEMCPY_CHK 180
#define EMSAN_FN_WMEMMOVE_CHK 181
#define EMSAN_FN_WMEMPCPY_CHK 182
#define EMSAN_FN_WMEMSET_CHK 183
#define EMSAN_FN_WCSCPY_CHK 184
#define EMSAN_FN_WCPCPY_CHK 185
#define EMSAN_FN_WCSNCPY_CHK 186
#define EMSAN_FN_WCPNCPY_CHK 187
#define EMSAN_FN_WCSCAT_CHK 188
#define EMSAN_FN_WCSNCAT_CHK 189
/* C library functions whose own code runs (libc.c): emsan checks at their entry the ranges
 * their arguments say they read and write, at the caller. Numbers: (nptr[, endptr[, base]]) */
#define EMSAN_FN_LIBC_FIRST 100
#define EMSAN_FN_STRTOL 100
#define EMSAN_FN_STRTOUL 101
#define EMSAN_FN_STRTOLL 102
#define EMSAN_FN_STRTOULL 103
#define EMSAN_FN_ATOI 104
#define EMSAN_FN_ATOL 105
#define EMSAN_FN_ATOLL 106
#define EMSAN_FN_STRTOD 107
#define EMSAN_FN_STRTOF 108
#define EMSAN_FN_STRTOLD 109
#define EMSAN_FN_ATOF 110
/* the printf family (and _FORTIFY_SOURCE's: (..., int flag[, size_t objsize], fmt, ...)) */
#define EMSAN_FN_PRINTF 120
#define EMSAN_FN_FPRINTF 121
#define EMSAN_FN_DPRINTF 122
#define EMSAN_FN_SPRINTF 123
#define EMSAN_FN_SNPRINTF 124
#define EMSAN_FN_ASPRINTF 125
#define EMSAN_FN_VPRINTF 126
#define EMSAN_FN_VFPRINTF 127
#define EMSAN_FN_VDPRINTF 128
#define EMSAN_FN_VSPRINTF 129
#define EMSAN_FN_VSNPRINTF 130
#define EMSAN_FN_VASPRINTF 131
#define EMSAN_FN_PRINTF_CHK 132
#define EMSAN_FN_FPRINTF_CHK 133
#define EMSAN_FN_DPRINTF_CHK 134
#define EMSAN_FN_SPRINTF_CHK 135
#define EMSAN_FN_SNPRINTF_CHK 136
#define EMSAN_FN_ASPRINTF_CHK 137
#define EMSAN_FN_VPRINTF_CHK 138
#define EMSAN_FN_VFPRINTF_CHK 139
#define EMSAN_FN_VDPRINTF_CHK 140
#define EMSAN_FN_VSPRINTF_CHK 141
#define EMSAN_FN_VSNPRINTF_CHK 142
#define EMSAN_FN_VASPRINTF_CHK 143
/* the scanf family */
#define EMSAN_FN_SCANF 150
#define EMSAN_FN_FSCANF 151
#define EMSAN_FN_SSCANF 152
#define EMSAN_FN_VSCANF 153
#define EMSAN_FN_VFSCANF 154
#define EMSAN_FN_VSSCANF 155
/* streams and reads */
#define EMSAN_FN_FGETS 160
#define EMSAN_FN_FGETS_CHK 161
#define EMSAN_FN_FREAD 162
#define EMSAN_FN_FREAD_CHK 163
#define EMSAN_FN_FWRITE 164
#define EMSAN_FN_FPUTS 165
#define EMSAN_FN_PUTS 166
#define EMSAN_FN_READ_CHK 167
#define EMSAN_FN_PREAD_CHK 168
#define EMSAN_FN_FGETS_UNLOCKED_CHK 169
#define EMSAN_FN_CHK_FAIL 170           /* glibc's _FORTIFY_SOURCE check failed (__chk_fail) */
#define EMSAN_FN_LIBC_LAST 170

/* Allocation families, for alloc-dealloc-mismatch. */
#define EMSAN_KIND_MALLOC 0
#define EMSAN_KIND_NEW 1
#define EMSAN_KIND_NEW_ARRAY 2

/* Register ids the runtime needs, in this order, from the Python arch layer. */
#define EMSAN_REG_ARG0 0
#define EMSAN_REG_RET 6
#define EMSAN_REG_SP 7
#define EMSAN_REG_PC 8
#define EMSAN_REG_LR 9
#define EMSAN_REG_FP 10
#define EMSAN_NREGS 11
/* At most this many general registers (the arch layer's gprs, in its order). */
#define EMSAN_MAX_GPRS 40

#define EMSAN_STACK_DEPTH 64
/* Set on a stack entry that may be the caller's return address (see depot.c). */
#define EMSAN_CANDIDATE_FRAME 0x8000000000000000

/* Error types. KASAN: */
#define EMSAN_ERR_ACCESS 1
#define EMSAN_ERR_DOUBLE_FREE 2
#define EMSAN_ERR_INVALID_FREE 3
#define EMSAN_ERR_MISMATCH 4
/* KFENCE (the kernel's enum kfence_error_type): */
#define EMSAN_ERR_KFENCE_OOB 5
#define EMSAN_ERR_KFENCE_UAF 6
#define EMSAN_ERR_KFENCE_CORRUPTION 7
#define EMSAN_ERR_KFENCE_INVALID 8
#define EMSAN_ERR_KFENCE_INVALID_FREE 9
/* KASAN's allocator: a request it refuses (kind: EMSAN_ALLOCERR_*; size, count, align: what
 * was asked), and a sized or aligned delete of another size or alignment than the object's
 * (size, align: what the delete passed, 0 when it passes none). */
#define EMSAN_ERR_ALLOC 10
#define EMSAN_ERR_DELETE_MISMATCH 11

/* Why an allocation is refused (ASan's bug types, which tell them apart). */
#define EMSAN_ALLOCERR_SIZE 1                /* allocation-size-too-big */
#define EMSAN_ALLOCERR_CALLOC_OVERFLOW 2     /* calloc-overflow */
#define EMSAN_ALLOCERR_REALLOCARRAY_OVERFLOW 3
#define EMSAN_ALLOCERR_PVALLOC_OVERFLOW 4
#define EMSAN_ALLOCERR_ALIGNMENT 5           /* invalid-allocation-alignment (memalign, aligned new) */
#define EMSAN_ALLOCERR_ALIGNED_ALLOC 6       /* invalid-aligned-alloc-alignment */
#define EMSAN_ALLOCERR_POSIX_MEMALIGN 7      /* invalid-posix-memalign-alignment */
#define EMSAN_ALLOCERR_OOM 8                 /* out-of-memory: the heap or the guest's limit is exhausted */
/* The largest request the allocator accepts (ASan's kMaxAllowedMallocSize on 64-bit targets). */
#define EMSAN_MAX_ALLOCATION 0x10000000000

/* The shadow call stack's return check (scs.c): a return through an overwritten return address.
 * addr: where the call left it (x86-64: its slot; arm64: the stack pointer at the call), pc: the
 * end of the block that returned, ret_expected/ret_target: where it should have gone and went. */
#define EMSAN_ERR_RET_OVERWRITE 12

/* --stack-checks full (stackobj.c): a range an interceptor or a system call touches runs past a
 * local variable of the frame it starts in (DWARF), or past that frame's saved return address.
 * frame_pc: the frame's return address into its function (the key of its objects),
 * frame_cfa/frame_lo: its canonical frame address and lowest address, frame_obj: the object's
 * index among those emsan_sobj_add() gave for frame_pc, or -1 (the frame's bounds). */
#define EMSAN_ERR_STACK_OOB 13

/* An access seen without its exact PC (an MMIO callback, --checks mmio): the registers when it
 * was made, which locate the instruction, and the PCs QEMU recovers near it. */
typedef struct emsan_access_site {
    int nregs;              /* 0: the error's pc is exact */
    int ncand;
    uint64_t cand[4];
    uint64_t regs[EMSAN_MAX_GPRS];
} emsan_access_site;

/* A KFENCE object as the report shows it, taken when the error happened. */
typedef struct emsan_kfence_object {
    int index;              /* kfence-#index, -1 if none */
    int state;              /* 0 unused, 1 allocated, 2 freed */
    uint64_t addr;
    uint64_t size;
    uint32_t alloc_stack;
    uint32_t free_stack;
    uint64_t alloc_ns;
    uint64_t free_ns;
    uint64_t now_ns;
    int nbytes;             /* corruption: bytes shown from the error's address */
    uint8_t bytes[16];
    uint8_t intact[16];
    uint32_t alloc_tid;     /* the threads that allocated and freed it */
    uint32_t free_tid;
} emsan_kfence_object;

typedef struct emsan_error {
    int type;               /* EMSAN_ERR_* */
    int is_write;
    uint64_t addr;          /* accessed, freed, or (KFENCE) the corrupted byte */
    uint64_t size;
    uint64_t pc;            /* the access; frees: the allocator's entry (KFENCE: the caller) */
    uint32_t stack;         /* depot handle of the access (or free) stack */
    int fn;                 /* the function emsan stood in for (frees, interceptors), 0 for accesses */
    int kind;               /* family of the deallocation used (mismatch); EMSAN_ALLOCERR_* */
    uint64_t count;         /* allocation errors: calloc's and reallocarray's count (size: the
                             * element's); out of memory: the bytes the guest's limits leave
                             * the heap (0: no limit), addr: the bytes it holds */
    uint64_t align;         /* alignment asked for (allocations) or passed (aligned delete) */
    uint64_t ret_expected;  /* EMSAN_ERR_RET_OVERWRITE: the call's return address */
    uint64_t ret_target;    /* ... and where the return went */
    uint64_t frame_pc, frame_cfa, frame_lo;   /* EMSAN_ERR_STACK_OOB */
    int frame_obj;
    emsan_access_site site;
    emsan_kfence_object kfence;
} emsan_error;

typedef struct emsan_runtime emsan_runtime;

/* regs: EMSAN_NREGS ids (EMSAN_REG_*); gprs: ngprs ids of every general register. */
emsan_runtime *emsan_runtime_new(void *uc, int is_arm64, const int *regs, const int *gprs, int ngprs);
void emsan_runtime_destroy(emsan_runtime *rt);
/* The 8 vector registers of floating-point arguments (xmm0-7, q0-7): variadic calls' doubles. */
void emsan_runtime_set_fp_args(emsan_runtime *rt, const int *ids);
/* The stack the frame-pointer walks may read (the main thread's). */
void emsan_runtime_set_stack(emsan_runtime *rt, uint64_t lo, uint64_t hi);
int emsan_pop_error(emsan_runtime *rt, emsan_error *out);
int emsan_errors_queued(emsan_runtime *rt);
/* Called (from inside the engine's hook) after each error is queued; without it, the engine
 * is stopped instead and the owner drains the queue after emu_start returns. */
void emsan_set_error_callback(emsan_runtime *rt, void (*cb)(void));
int emsan_depot_get(emsan_runtime *rt, uint32_t handle, uint64_t *out, int max);

/* --stack-checks full (stackobj.c): stack objects of the frames interceptors and system calls
 * touch. lookup(pc) is called the first time a frame suspended at return address pc is touched;
 * it answers with emsan_sobj_add(): entry, the function's first instruction (0: unknown); the
 * CFI rule for its CFA at the call (cfa_reg 1: sp + cfa_off, 2: fp + cfa_off, 0: none); and n
 * objects [lo[i], hi[i]) relative to the frame's CFA (n = 0: no DWARF, the frame's bounds only). */
void emsan_sobj_enable(emsan_runtime *rt, void (*lookup)(uint64_t));
void emsan_sobj_add(emsan_runtime *rt, uint64_t pc, uint64_t entry, int cfa_reg, int64_t cfa_off,
                    const int64_t *lo, const int64_t *hi, int n);
typedef struct emsan_sobj_stats { uint64_t checks, frames, lookups, reports; } emsan_sobj_stats;
void emsan_sobj_get_stats(emsan_runtime *rt, emsan_sobj_stats *out);

/* Stack collection. */
#define EMSAN_STACKS_FP 0
#define EMSAN_STACKS_NONE 1
#define EMSAN_STACKS_CFI 2
#define EMSAN_STACKS_SCS 3
#define EMSAN_STACKS_X18 4
typedef struct emsan_stack_stats {
    uint64_t saves;            /* traces collected (alloc, free, errors) */
    uint64_t collector_ns;     /* time spent collecting and saving them (timed runs only) */
    uint64_t unique;           /* traces held by the depot */
    uint64_t bytes;            /* bytes the depot holds */
    uint64_t scs_pushes;       /* shadow call stack: calls and returns tracked */
    uint64_t scs_pops;
    uint64_t scs_resyncs;      /* entries dropped by the stack-pointer resynchronization */
    uint64_t ret_checks;       /* --stack-checks: returns compared with the call's return address */
    uint64_t ret_mismatches;
    uint64_t scs_memo_hits;    /* traces found by the shadow call stack's (top id, pc) memo, not hashed */
} emsan_stack_stats;
/* timed: measure the collectors' time (--stats); two clock reads per trace are wasted otherwise */
void emsan_set_stacks(emsan_runtime *rt, int mode, int no_depot, int timed);
void emsan_get_stack_stats(emsan_runtime *rt, emsan_stack_stats *out);
/* Shadow call stack: the block hook (user data: the runtime) and per-module tables of block
 * ends. kinds[i] describes address lo + i: 1 a call ends there, 2 a return, 4 an indirect
 * jump, 8 a function starts there, 32 only conditional branches lead there. */
void emsan_scs_block_cb(void *uc, uint64_t address, uint32_t size, void *ud);
/* Whether a translated block needs emsan_scs_block_cb at its start (engine/patches/012). */
_Bool emsan_scs_block_filter(void *uc, uint64_t addr, uint32_t size, void *ud);
/* kinds: hi - lo bytes; calls: ncalls (u32 return address - lo, u32 target - lo), sorted by target */
void emsan_scs_add_module(emsan_runtime *rt, uint64_t lo, uint64_t hi, const uint8_t *kinds, const uint8_t *calls,
                          size_t ncalls);
void emsan_scs_mark_intercept(emsan_runtime *rt, uint64_t addr);
/* --stack-checks ret: compare every tracked return with the call's return address. */
void emsan_scs_set_ret_checks(emsan_runtime *rt, int on);
/* The engine stopped on fetching `pc`: if the block before ended in a return, check that return
 * (a corrupted one that went to unmapped or non-executable memory); 1 if it queued an error. */
int emsan_scs_check_fetch(emsan_runtime *rt, uint64_t pc);
struct emsan_scs_thread;
struct emsan_scs_thread *emsan_scs_thread_new(void);
void emsan_scs_thread_swap(emsan_runtime *rt, struct emsan_scs_thread *t);
void emsan_scs_thread_free(struct emsan_scs_thread *t);
/* CFI unwinding: per-module rows sorted by pc (absolute addresses), from .eh_frame/.debug_frame. */
typedef struct emsan_cfi_row {
    uint64_t pc;
    int32_t cfa_off;
    int32_t ra_off;            /* RA saved at CFA + ra_off; 0: in LR (arm64), or no information */
    int32_t fp_off;            /* FP saved at CFA + fp_off; 0: unchanged */
    uint8_t cfa_reg;           /* 0 none (no rule here), 1 SP, 2 FP */
    uint8_t pad[3];
} emsan_cfi_row;
void emsan_cfi_add_module(emsan_runtime *rt, uint64_t lo, uint64_t hi, const emsan_cfi_row *rows, size_t n);

/* ---- KASAN (kasan.c, heap.c, quarantine.c, intercept.c; shadow.c, gshadow.c, generic.c,
 * mmio.c; tags.c, mte.c): emsan's allocator with the generic or a tag-based mode behind one
 * set of operations ---------------------------------------------------------------------------- */
#define EMSAN_KASAN_GENERIC 0
#define EMSAN_KASAN_SW_TAGS 1
#define EMSAN_KASAN_HW_TAGS 2

/* Object states. */
#define EMSAN_OBJ_FREE 0
#define EMSAN_OBJ_LIVE 1
#define EMSAN_OBJ_QUARANTINED 2        /* freed (tag modes: the stack ring's last record is a free) */

/* Bug types from the tag modes' stack ring, as the kernel's tag-mode reports classify them. */
#define EMSAN_TAGBUG_INVALID 1
#define EMSAN_TAGBUG_UAF 2
#define EMSAN_TAGBUG_OOB 3

/* What emsan knows about the heap object at an address, as the mode's report needs it. */
typedef struct emsan_obj_info {
    int found;             /* an object of emsan's heap is there */
    int state;             /* EMSAN_OBJ_* */
    int kind;              /* allocation family */
    int large;
    uint64_t start;
    uint64_t size;         /* requested size (tag modes: the ring's allocation's, else the cache size) */
    uint64_t cache_size;   /* size class ("kmalloc-N") */
    uint64_t align;        /* alignment an aligned operator new asked for, 0 for the others */
    uint32_t alloc_stack;  /* 0: none */
    uint32_t free_stack;
    /* tag modes: the first granule of the access whose tag does not match, its memory tag
     * (-1: memory without tags) and the bug type the stack ring gives (0 in generic mode) */
    uint64_t first_bad;
    int mem_tag;
    int tag_bug;
    uint32_t alloc_tid;    /* the threads that allocated and freed it (0: not known) */
    uint32_t free_tid;
} emsan_obj_info;

typedef struct emsan_kasan_stats {
    uint64_t allocs;
    uint64_t frees;
    uint64_t live_bytes;
    uint64_t quarantine_bytes;
    uint64_t quarantine_objects;
    uint64_t shadow_pages;     /* private shadow pages (4 KiB each, one per 32 KiB chunk) */
    uint64_t shadow_pages_peak;
    uint64_t vm_populated;     /* mmap-area chunks given a private shadow page on first use */
    uint64_t vm_released;      /* ... and given back after munmap (lazily, in batches) */
    uint64_t tlb_flushes;      /* guest-visible shadow: TLB flushes after chunks changed pages */
    uint64_t stale_rechecks;   /* guest checks that failed on a stale mapping and passed on re-check */
    uint64_t heap_pages;       /* guest heap pages ever used */
    uint64_t depot_traces;
    uint64_t depot_bytes;
    uint64_t intercepted;
    uint64_t errors;
} emsan_kasan_stats;

typedef struct emsan_kasan emsan_kasan;

/* mode: EMSAN_KASAN_*; seed: the tag modes' random tags. */
emsan_kasan *emsan_kasan_new(emsan_runtime *rt, int mode, uint64_t base, uint64_t size, uint64_t quarantine_bytes,
                             uint64_t seed);
void emsan_kasan_destroy(emsan_kasan *k);
/* Allocation errors (EMSAN_ERR_ALLOC) reported (1, the default) or not (0); either way the call
 * then fails as the guest's C library makes it fail. */
void emsan_kasan_set_allocator_errors(emsan_kasan *k, int report);
/* Bytes of live objects the guest's resource limits leave the heap (~0: no limit). */
void emsan_kasan_set_budget(emsan_kasan *k, uint64_t bytes);
/* Hook user data for a function emsan stands in for (emsan_kasan_entry_cb), NULL if none. */
void *emsan_kasan_entry(emsan_kasan *k, int fn);
void emsan_kasan_entry_cb(void *uc, uint64_t address, uint32_t size, void *ud);
/* The mode's per-access check, for a memory hook over every address (user data: the kasan). */
void *emsan_kasan_access_cb(emsan_kasan *k);
/* A range some other agent touches on the guest's behalf (a system call's buffer); 1 if bad. */
int emsan_kasan_check_range(emsan_kasan *k, uint64_t addr, uint64_t size, int is_write, uint64_t pc);
/* Code in [lo, hi) may make aligned vector reads that straddle an object's end (optimized
 * libc string routines); such a read is not a bug when one of its bytes is accessible. */
void emsan_kasan_add_tolerant_range(emsan_kasan *k, uint64_t lo, uint64_t hi);
int emsan_kasan_describe(emsan_kasan *k, uint64_t addr, uint64_t size, emsan_obj_info *out);
void emsan_kasan_get_stats(emsan_kasan *k, emsan_kasan_stats *out);
/* A persistent fuzzing loop (checkpoint.c): save the allocator's state, go back to it after each
 * input; and a new random stream (the tags) for each input. */
void emsan_kasan_checkpoint(emsan_kasan *k);
void emsan_kasan_rollback(emsan_kasan *k);
void emsan_kasan_reseed(emsan_kasan *k, uint64_t seed);

/* Shadow (generic encoding, one byte per 8 bytes, per-page; shadow.c). */
void emsan_shadow_full(emsan_kasan *k);
int emsan_shadow_byte(emsan_kasan *k, uint64_t addr);
/* The mmap ("vmalloc") area: its shadow follows what the guest maps there, lazily. */
void emsan_vm_area(emsan_kasan *k, uint64_t lo, uint64_t hi);
void emsan_vm_map(emsan_kasan *k, uint64_t lo, uint64_t hi);
void emsan_vm_unmap(emsan_kasan *k, uint64_t lo, uint64_t hi);
/* The shadow mapped into the guest (gshadow.c): shadow(addr) = (addr >> 3) + EMSAN_SHADOW_OFFSET,
 * served from the pool mapped at EMSAN_SHADOW_POOL_PA through Unicorn's virtual TLB. */
#define EMSAN_SHADOW_OFFSET 0x100000000000
#define EMSAN_SHADOW_POOL_PA 0x062000000000
void *emsan_shadow_pool(emsan_kasan *k);
uint64_t emsan_shadow_pool_bytes(void);
void emsan_shadow_expose(emsan_kasan *k);
_Bool emsan_shadow_tlb_cb(void *uc, uint64_t vaddr, int type, void *entry, void *ud);
/* 1 if [addr, addr+size) is poisoned now; 0 if a guest check failed on a stale mapping. */
int emsan_shadow_recheck(emsan_kasan *k, uint64_t addr, uint64_t size);

/* The host memory behind the heap (emsan's), to be mapped at the heap's guest address. */
void *emsan_kasan_heap_memory(emsan_kasan *k);

/* --checks inline (inline.c): the heap checked by translated code against a flat copy of its
 * shadow (engine/patches/011), or of its tags in tag modes (015, with the virtual TLB
 * emsan_inline_tlb_cb); 0 when the engine cannot (not an x86-64 host): check otherwise. */
int emsan_inline_init(emsan_kasan *k, void *get_cpu, void *restore);
void emsan_inline_cb(void *uc, uint64_t addr, int size, _Bool is_write, uintptr_t host_pc, void *ud);
void emsan_inline_tag_cb(void *uc, uint64_t addr, int size, _Bool is_write, uintptr_t host_pc, void *ud);
_Bool emsan_inline_tlb_cb(void *uc, uint64_t vaddr, int type, void *entry, void *ud);

/* --checks mmio (mmio.c): the heap checked through an MMIO view instead of a memory hook.
 * Returns the host memory behind the heap, to be mapped at the heap's guest address. */
void *emsan_mmio_init(emsan_kasan *k, uint64_t view_pa);
_Bool emsan_mmio_tlb_cb(void *uc, uint64_t vaddr, int type, void *entry, void *ud);
uint64_t emsan_mmio_read(void *uc, uint64_t offset, unsigned size, void *ud);
void emsan_mmio_write(void *uc, uint64_t offset, unsigned size, uint64_t value, void *ud);
uint64_t emsan_tags_mmio_read(void *uc, uint64_t offset, unsigned size, void *ud);
void emsan_tags_mmio_write(void *uc, uint64_t offset, unsigned size, uint64_t value, void *ud);
uint64_t emsan_mmio_view_bytes(emsan_kasan *k);
/* QEMU internals of the pinned libunicorn (qemu_get_cpu_<arch>, cpu_restore_state_<arch>) that
 * recover the exact PC of an access seen in an MMIO callback. */
void emsan_mmio_set_pc_recovery(emsan_kasan *k, void *get_cpu, void *restore);
/* on: guest memory is copy-on-write now (the engine keeps a snapshot); the checking view then
 * goes through the engine to the heap's current copy. */
void emsan_mmio_copy_on_write(emsan_kasan *k, int on);

/* Tag-based modes (tags.c, mte.c). */
int emsan_tag_at(emsan_kasan *k, uint64_t addr);
/* hw-tags: 1 when the instruction at the PC was an MTE instruction, now done (PC advanced). */
int emsan_mte_emulate(emsan_kasan *k);
/* out[0..3]: private tag pages, MTE instructions emulated, foreign tagged pages, ring records */
void emsan_tag_stats(emsan_kasan *k, uint64_t *out);

/* ---- KFENCE (kfence.c): a sampled guard-page pool behind the virtual TLB ------------------- */
typedef struct emsan_kfence_stats {
    uint64_t calls;
    uint64_t allocated;
    uint64_t total_allocs;
    uint64_t total_frees;
    uint64_t skipped_incompat;
    uint64_t skipped_capacity;
    uint64_t skipped_covered;
    uint64_t spilled;
    uint64_t tlb_flushes;
    uint64_t errors;
    uint64_t guest_time;
} emsan_kfence_stats;

typedef struct emsan_kfence emsan_kfence;

emsan_kfence *emsan_kfence_new(emsan_runtime *rt, uint64_t pool, uint32_t nobj, uint64_t trap, uint64_t arena_size,
                               uint64_t seed, uint64_t interval, uint64_t insn_interval, uint32_t skip_thresh_pct);
void emsan_kfence_destroy(emsan_kfence *k);
/* Hook user data for an allocator entry point (emsan_kfence_entry_cb), NULL for the functions
 * KFENCE leaves to the guest. */
void *emsan_kfence_entry(emsan_kfence *k, int fn);
void emsan_kfence_get_stats(emsan_kfence *k, emsan_kfence_stats *out);
int emsan_kfence_fault(emsan_kfence *k, int type, uint64_t addr);
/* Put the gate of engine/patches/017 on the entry hook hh of allocator function fn; 0 or a uc_err. */
int emsan_kfence_gate(emsan_kfence *k, int fn, size_t hh);
int emsan_kfence_check_range(emsan_kfence *k, uint64_t addr, uint64_t size, int is_write);
/* A persistent fuzzing loop: save the pool's state, go back to it after each input; and a new
 * sampling stream for each input. */
void emsan_kfence_checkpoint(emsan_kfence *k);
void emsan_kfence_rollback(emsan_kfence *k);
void emsan_kfence_reseed(emsan_kfence *k, uint64_t seed);
/* Unicorn callbacks: UC_HOOK_TLB_FILL, UC_HOOK_CODE at allocator entries, UC_HOOK_BLOCK. */
_Bool emsan_kfence_tlb_cb(void *uc, uint64_t vaddr, int type, void *entry, void *ud);
void emsan_kfence_entry_cb(void *uc, uint64_t address, uint32_t size, void *ud);
void emsan_kfence_block_cb(void *uc, uint64_t address, uint32_t size, void *ud);

/* ---- compiler-assisted mode (compiler.c): the guest checks itself (clang -fsanitize=kernel-address
 * with src/emsan/runtime/kasan_runtime.h); emsan stands in for its report and globals hooks ---- */
typedef struct emsan_cc_stats {
    uint64_t checks_failed;    /* calls of __emsan_kasan_report */
    uint64_t rechecked_clean;  /* ... that emsan's own shadow found clean (a stale mapping) */
    uint64_t reports;          /* ... queued as access errors */
    uint64_t globals;          /* globals registered */
    uint64_t no_returns;       /* __asan_handle_no_return calls that cleared the stack's shadow */
    uint64_t guest_routines;   /* memcpy/memmove/mempcpy/memset calls checked and left to the guest's own routine */
} emsan_cc_stats;

typedef struct emsan_cc_global {
    uint64_t beg;
    uint64_t size;
    uint64_t size_with_redzone;
    uint64_t name;             /* guest addresses of C strings */
    uint64_t module_name;
    uint64_t location;         /* guest address of {const char *file; int line, column;}, or 0 */
} emsan_cc_global;

typedef struct emsan_cc emsan_cc;

emsan_cc *emsan_cc_new(emsan_kasan *k);
void emsan_cc_destroy(emsan_cc *cc);
void emsan_cc_get_stats(emsan_cc *cc, emsan_cc_stats *out);
int emsan_cc_find_global(emsan_cc *cc, uint64_t addr, emsan_cc_global *out);
uint64_t emsan_cc_find_frame(emsan_cc *cc, uint64_t addr, uint64_t lo);
/* UC_HOOK_CODE callbacks (user data: the emsan_cc) at __emsan_kasan_report, __asan_register_globals
 * and __asan_handle_no_return. */
void emsan_cc_report_cb(void *uc, uint64_t address, uint32_t size, void *ud);
void emsan_cc_globals_cb(void *uc, uint64_t address, uint32_t size, void *ud);
void emsan_cc_no_return_cb(void *uc, uint64_t address, uint32_t size, void *ud);

/* ---- leak detection (kmemleak.c): kmemleak's scan over emsan's heap, for the KASAN modes ---- */
typedef struct emsan_leaks emsan_leaks;

/* Leaked objects of one allocation stack, found by the last scan and not reported before. */
typedef struct emsan_leak_group {
    uint32_t stack;            /* allocation stack (depot handle) */
    uint32_t id;               /* index, for emsan_leaks_members() */
    int indirect;              /* 1: reachable only from other leaked objects */
    uint64_t count;            /* objects */
    uint64_t bytes;            /* their requested sizes */
    uint64_t indirect_count;   /* direct groups: objects reachable only through these */
    uint64_t indirect_bytes;
    uint64_t before_main;      /* objects allocated before main started */
    uint64_t addr;             /* the first object allocated (the guest's pointer: tagged in tag modes) */
    uint64_t size;
    uint64_t first_seq;        /* its allocation number */
    uint64_t jiffies;          /* its allocation time: ms since the scanner started */
    uint32_t nhead;            /* its first bytes (at most 32) */
    uint8_t head[32];
} emsan_leak_group;

typedef struct emsan_leak_stats {
    uint64_t scans;
    uint64_t objects;          /* live objects (last scan) */
    uint64_t root_bytes;       /* guest memory scanned as roots (last scan) */
    uint64_t object_bytes;     /* object memory scanned (last scan) */
    uint64_t leaked;           /* new direct leaks, objects and bytes (last scan) */
    uint64_t leaked_bytes;
    uint64_t indirect;         /* new indirect leaks (last scan) */
    uint64_t indirect_bytes;
    uint64_t scan_ns;          /* last scan: wall time */
    uint64_t scan_cpu_ns;      /* ... and the CPU time of emsan's thread */
    uint64_t total_scan_ns;
    uint64_t now_jiffies;      /* ms since the scanner started */
} emsan_leak_stats;

/* Objects allocated before main are roots (not reported). */
#define EMSAN_LEAKS_IGNORE_BEFORE_MAIN 1

/* The scanner of a KASAN heap (owned by it); allocation times count from now. */
emsan_leaks *emsan_leaks_new(emsan_kasan *k);
/* main() starts: allocations from now on are not "before main". */
void emsan_leaks_main_started(emsan_leaks *l);
/* Objects allocated by code in [lo, hi) (their first frame) are roots. */
void emsan_leaks_ignore_callers(emsan_leaks *l, uint64_t lo, uint64_t hi);
/* One scan. ranges: nranges pairs lo, hi of guest memory; words: register values. Returns the
 * number of groups of new leaks (direct first, largest total first). */
size_t emsan_leaks_scan(emsan_leaks *l, const uint64_t *ranges, size_t nranges, const uint64_t *words,
                        size_t nwords, int flags);
size_t emsan_leaks_groups(emsan_leaks *l, emsan_leak_group *out, size_t max);
size_t emsan_leaks_members(emsan_leaks *l, size_t group, uint64_t *addrs, uint64_t *sizes, size_t max);
void emsan_leaks_get_stats(emsan_leaks *l, emsan_leak_stats *out);
/* Scans during the run: the block hook (user data: the scanner) stops the engine every
 * `insns` guest instructions (code bytes / 4); emsan_leaks_take_due() says a scan is due. */
void emsan_leaks_scan_every(emsan_leaks *l, uint64_t insns);
void emsan_leaks_block_cb(void *uc, uint64_t address, uint32_t size, void *ud);
int emsan_leaks_take_due(emsan_leaks *l);
/* ---- the guest's page table (vmem.c, machine/vmem.py): protections the engine's TLB fill reads ---- */
typedef struct emsan_vm emsan_vm;
#define EMSAN_VM_PRESENT 8
emsan_vm *emsan_vm_new(int arm64, uint64_t task_size);
void emsan_vm_free(emsan_vm *vm);
int emsan_vm_set(emsan_vm *vm, uint64_t lo, uint64_t hi, int prot);
int emsan_vm_get(emsan_vm *vm, uint64_t va);
uint64_t emsan_vm_tables(emsan_vm *vm);
void emsan_vm_set_inner(emsan_vm *vm, void *fill, void *ud);
int emsan_vm_fault(emsan_vm *vm, uint64_t *addr, int *type);
void emsan_vm_clear_fault(emsan_vm *vm);
_Bool emsan_vm_tlb_cb(void *uc, uint64_t vaddr, int type, void *entry, void *ud);
void emsan_tick_cb(void *uc, uint64_t address, uint32_t size, void *ud);
void emsan_slice_cb(void *uc, uint64_t address, uint32_t size, void *ud);
void emsan_set_tid(emsan_runtime *rt, uint32_t tid);

/* ---- resource exhaustion (exhaust.c): what emsan's native state ran out of, or NULL ---- */
const char *emsan_exhausted(void);
void emsan_shadow_set_limit(emsan_kasan *k, uint64_t pages);

/* ---- AFL++ target side: fork server, coverage, CompCov, shared translations (afl.c) ---- */
struct emsan_afl;
struct emsan_afl *emsan_afl_new(void *uc, uint32_t ctl_request_cache);
int emsan_afl_has_afl(struct emsan_afl *a);
int emsan_afl_cmplog(struct emsan_afl *a);
uint64_t emsan_afl_cached(struct emsan_afl *a);
uint8_t *emsan_afl_map(struct emsan_afl *a);
int emsan_afl_cover(struct emsan_afl *a, int block_type, uint64_t begin, uint64_t end);
int emsan_afl_compcov(struct emsan_afl *a, int opcode_type, int op, int flags, uint64_t begin, uint64_t end);
int emsan_afl_share_cache(struct emsan_afl *a, int edge_type);
const uint8_t *emsan_afl_input(struct emsan_afl *a, uint32_t *len);
int emsan_afl_serve(struct emsan_afl *a);
int emsan_afl_next(struct emsan_afl *a);
