/* The CPU state a new process starts with, and the CPU features it is told about.
 *
 * Built static with its ELF entry at state_entry (-Wl,-e,state_entry), so the registers are
 * saved before any C library code runs. Prints, one "name value" per line:
 *   state ...    the registers as the kernel set them (all but the stack pointer's value)
 *   auxv ...     AT_HWCAP / AT_HWCAP2 as they are in the auxiliary vector
 *   check ...    consistency of what is advertised (x86: AT_HWCAP is CPUID.1:EDX)
 *   feature ...  for every feature advertised (CPUID bits on x86-64, AT_HWCAP bits on arm64),
 *                the result of instructions of that feature on fixed inputs
 *   unknown ...  an advertised bit this program has no probe for
 * Run natively (x86-64) or under qemu-aarch64 (arm64) and under emsan, the lines compare. */
#include <elf.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t saved_regs[40];
uint8_t saved_fp[1024] __attribute__((aligned(64)));

static sigjmp_buf probe_env;

static void on_sigill(int sig) { siglongjmp(probe_env, sig); }

/* Runs one feature's probe; an instruction the CPU refuses prints "SIGILL" instead. */
static void run_probe(const char *name, void (*probe)(void))
{
    printf("advertised %s\n", name);
    fflush(stdout);
    if (sigsetjmp(probe_env, 1) == 0)
        probe();
    else
        printf("feature %s SIGILL\n", name);
    fflush(stdout);
}

static uint64_t auxv_value(uint64_t type)
{
    /* The auxiliary vector as the kernel wrote it, after argv and envp on the initial stack. */
    uint64_t *sp = (uint64_t *)saved_regs[39];
    uint64_t argc = sp[0];
    uint64_t *p = sp + 1 + argc + 1;
    while (*p) p++;
    for (p++; p[0] != AT_NULL; p += 2)
        if (p[0] == type) return p[1];
    return 0;
}

#if defined(__x86_64__)
#include <cpuid.h>
#include <asm/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

__asm__(".globl state_entry\n"
        "state_entry:\n"
        "  mov %rax, saved_regs+0(%rip)\n  mov %rbx, saved_regs+8(%rip)\n"
        "  mov %rcx, saved_regs+16(%rip)\n mov %rdx, saved_regs+24(%rip)\n"
        "  mov %rsi, saved_regs+32(%rip)\n mov %rdi, saved_regs+40(%rip)\n"
        "  mov %rbp, saved_regs+48(%rip)\n mov %rsp, saved_regs+312(%rip)\n"
        "  mov %r8, saved_regs+64(%rip)\n  mov %r9, saved_regs+72(%rip)\n"
        "  mov %r10, saved_regs+80(%rip)\n mov %r11, saved_regs+88(%rip)\n"
        "  mov %r12, saved_regs+96(%rip)\n mov %r13, saved_regs+104(%rip)\n"
        "  mov %r14, saved_regs+112(%rip)\n mov %r15, saved_regs+120(%rip)\n"
        "  pushfq\n  popq saved_regs+128(%rip)\n"
        "  fxsave saved_fp(%rip)\n"
        "  mov saved_regs+0(%rip), %rax\n"
        "  jmp _start\n");

static const char *const GPR[16] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                                    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"};

static void print_state(void)
{
    for (int i = 0; i < 16; i++)
        if (i != 7) printf("state %s %#" PRIx64 "\n", GPR[i], saved_regs[i]);
    printf("state rsp%%16 %" PRIu64 "\n", saved_regs[39] % 16);
    printf("state rflags %#" PRIx64 "\n", saved_regs[16]);
    uint16_t fcw, fsw;
    uint32_t mxcsr;
    memcpy(&fcw, saved_fp, 2);
    memcpy(&fsw, saved_fp + 2, 2);
    memcpy(&mxcsr, saved_fp + 24, 4);
    printf("state fcw %#x\nstate fsw %#x\nstate ftw(abridged) %#x\nstate mxcsr %#x\n", fcw, fsw, saved_fp[4], mxcsr);
    int nonzero = 0;
    for (int i = 32; i < 32 + 8 * 16 + 16 * 16; i++) nonzero |= saved_fp[i];
    printf("state st0-7,xmm0-15 %s\n", nonzero ? "nonzero" : "zero");
}

static unsigned cpuid_reg(unsigned leaf, unsigned sub, int reg)
{
    unsigned r[4];
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
    return r[reg];
}

#define EAX 0
#define EBX 1
#define ECX 2
#define EDX 3
typedef void (*probe_fn)(void);
struct feature { const char *name; unsigned leaf, sub; int reg, bit; probe_fn probe; };

static const uint64_t A = 0x0123456789abcdefULL, B = 0xfedcba9876543210ULL, C = 0x5a5a5a5a0f0f0f0fULL;
static uint8_t vec_a[16] __attribute__((aligned(16))) = "emsan-features!";
static uint8_t vec_b[16] __attribute__((aligned(16))) = {1, 0x80, 3, 0x84, 5, 6, 0x87, 8, 9, 10, 11, 12, 13, 14, 15, 0};

static void show_xmm(const char *name, const uint8_t *x)
{
    printf("%s%s", strncmp(name, "gap ", 4) ? "feature " : "", name);
    for (int i = 0; i < 16; i++) printf("%s%02x", i ? "" : " ", x[i]);
    printf("\n");
}

static void p_x87(void)
{
    long double third = 1.0L / 3, r;
    double d = 1.0 / 3;
    __asm__("fldt %1\n fsqrt\n fldpi\n fmulp\n fstpt %0" : "=m"(r) : "m"(third));
    unsigned char b[10];
    memcpy(b, &r, 10);
    printf("feature fpu 1/3=%.20Lg sqrt*pi=", third);
    for (int i = 9; i >= 0; i--) printf("%02x", b[i]);
    printf(" dbl=%.17g\n", d);
}
static void p_cmov(void) { uint64_t r = A; __asm__("cmp %2, %1\n cmovb %2, %0" : "+r"(r) : "r"(A), "r"(B)); printf("feature cmov %#" PRIx64 "\n", r); }
static void p_cx8(void)
{
    uint64_t mem = A, expect = A;
    __asm__ volatile("lock cmpxchg8b %0" : "+m"(mem), "+A"(expect) : "b"(0x11111111), "c"(0x22222222));
    printf("feature cx8 %#" PRIx64 "\n", mem);
}
static void p_mmx(void)
{
    uint64_t r;
    __asm__("movq %1, %%mm0\n movq %2, %%mm1\n paddb %%mm1, %%mm0\n pmullw %%mm1, %%mm0\n movq %%mm0, %0\n emms"
            : "=m"(r) : "m"(A), "m"(B) : "mm0", "mm1");
    printf("feature mmx %#" PRIx64 "\n", r);
}
static void p_sse(void)
{
    float f[4] = {1.5f, -2.25f, 3.0f, 1e30f}, g[4] = {0.5f, 4.0f, -3.0f, 1e10f};
    __asm__("movups %0, %%xmm0\n movups %1, %%xmm1\n mulps %%xmm1, %%xmm0\n rsqrtps %%xmm1, %%xmm2\n"
            "sqrtps %%xmm0, %%xmm0\n movups %%xmm0, %0" : "+m"(f) : "m"(g) : "xmm0", "xmm1", "xmm2");
    printf("feature sse %a %a %a %a\n", f[0], f[1], f[2], f[3]);
}
static void p_sse2(void)
{
    double d[2] = {1.0 / 3, 2.0 / 7};
    uint8_t x[16];
    __asm__("movupd %1, %%xmm0\n sqrtpd %%xmm0, %%xmm0\n movupd %%xmm0, %1\n"
            "movdqa %2, %%xmm1\n pmaddwd %3, %%xmm1\n psadbw %3, %%xmm1\n movdqu %%xmm1, %0"
            : "=m"(x), "+m"(d) : "m"(vec_a), "m"(vec_b) : "xmm0", "xmm1");
    printf("feature sse2 %a %a\n", d[0], d[1]);
    show_xmm("sse2-int", x);
}
static void p_sse3(void)
{
    double d[2] = {1.25, -7.5}, e[2] = {3.0, 0.125};
    __asm__("movupd %0, %%xmm0\n movupd %1, %%xmm1\n haddpd %%xmm1, %%xmm0\n addsubpd %%xmm1, %%xmm0\n"
            "movddup %%xmm0, %%xmm0\n movupd %%xmm0, %0" : "+m"(d) : "m"(e) : "xmm0", "xmm1");
    printf("feature sse3 %a %a\n", d[0], d[1]);
}
static void p_pclmul(void)
{
    uint8_t x[16];
    __asm__("movdqa %1, %%xmm0\n pclmulqdq $0x11, %2, %%xmm0\n movdqu %%xmm0, %0" : "=m"(x) : "m"(vec_a), "m"(vec_b) : "xmm0");
    show_xmm("pclmulqdq", x);
}
static void p_ssse3(void)
{
    uint8_t x[16];
    __asm__("movdqa %1, %%xmm0\n pshufb %2, %%xmm0\n palignr $5, %2, %%xmm0\n pmaddubsw %2, %%xmm0\n"
            "phaddw %2, %%xmm0\n pabsb %%xmm0, %%xmm0\n movdqu %%xmm0, %0" : "=m"(x) : "m"(vec_a), "m"(vec_b) : "xmm0");
    show_xmm("ssse3", x);
}
static void p_cx16(void)
{
    uint64_t mem[2] __attribute__((aligned(16))) = {A, B};
    uint64_t lo = A, hi = B;
    __asm__ volatile("lock cmpxchg16b %0" : "+m"(mem), "+a"(lo), "+d"(hi) : "b"(C), "c"(A));
    printf("feature cx16 %#" PRIx64 " %#" PRIx64 "\n", mem[0], mem[1]);
}
static void p_sse41(void)
{
    uint8_t x[16];
    double d[2] = {2.5, -3.5};
    int z;
    __asm__("movdqa %2, %%xmm0\n pminud %3, %%xmm0\n pmulld %3, %%xmm0\n pblendw $0x5a, %3, %%xmm0\n"
            "pinsrq $1, %4, %%xmm0\n movdqu %%xmm0, %0\n ptest %3, %%xmm0\n setz %b1\n movzbl %b1, %1"
            : "=m"(x), "=r"(z) : "m"(vec_a), "m"(vec_b), "r"(C) : "xmm0", "cc");
    __asm__("movupd %0, %%xmm1\n roundpd $0, %%xmm1, %%xmm1\n dppd $0x31, %%xmm1, %%xmm1\n movupd %%xmm1, %0" : "+m"(d) : : "xmm1");
    show_xmm("sse4.1", x);
    printf("feature sse4.1-fp %a %a z=%d\n", d[0], d[1], z);
}
static void p_sse42(void)
{
    unsigned idx, crc = 0xffffffffu;
    uint8_t m[16];
    __asm__("movdqa %2, %%xmm0\n pcmpistri $0x0c, %3, %%xmm0\n mov %%ecx, %0\n"
            "pcmpestrm $0x44, %3, %%xmm0\n movdqu %%xmm0, %1"
            : "=r"(idx), "=m"(m) : "m"(vec_b), "m"(vec_a), "a"(7), "d"(9) : "xmm0", "ecx", "cc");
    __asm__("crc32q %1, %q0\n crc32b %b2, %0" : "+r"(crc) : "r"(A), "r"(0x5a));
    printf("feature sse4.2 idx=%u crc=%#x\n", idx, crc);
    show_xmm("sse4.2-mask", m);
}
static void p_movbe(void) { uint64_t r; __asm__("movbe %1, %0" : "=r"(r) : "m"(A)); printf("feature movbe %#" PRIx64 "\n", r); }
static void p_popcnt(void) { uint64_t r; __asm__("popcnt %1, %0" : "=r"(r) : "r"(B) : "cc"); printf("feature popcnt %" PRIu64 "\n", r); }
static void p_aes(void)
{
    uint8_t x[16];
    __asm__("movdqa %1, %%xmm0\n aesenc %2, %%xmm0\n aesenclast %2, %%xmm0\n aesdec %2, %%xmm0\n"
            "aesimc %%xmm0, %%xmm0\n aeskeygenassist $0x1b, %%xmm0, %%xmm0\n movdqu %%xmm0, %0"
            : "=m"(x) : "m"(vec_a), "m"(vec_b) : "xmm0");
    show_xmm("aes", x);
}
static void p_xsave(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    printf("feature xsave xcr0-x87-sse %#x\n", lo & 3);     /* the host may enable more (AVX...) */
}
static void p_rdrand(void)
{
    uint64_t r;
    unsigned char ok;
    int tries = 0;
    do __asm__ volatile("rdrand %0\n setc %1" : "=r"(r), "=qm"(ok) : : "cc"); while (!ok && ++tries < 100);
    printf("feature rdrand %s\n", ok ? "ok" : "fails");
}
static void p_fsgsbase(void)
{
    uint64_t fs, prctl_fs = 0;
    __asm__ volatile("rdfsbase %0" : "=r"(fs));
    syscall(SYS_arch_prctl, ARCH_GET_FS, &prctl_fs);
    printf("feature fsgsbase %s\n", fs == prctl_fs ? "matches-arch_prctl" : "differs");
}
static void p_bmi1(void)
{
    uint64_t r1, r2, r3, r4, r5;
    __asm__("andn %5, %6, %0\n bextr %7, %5, %1\n blsi %5, %2\n blsr %5, %3\n tzcnt %6, %4"
            : "=&r"(r1), "=&r"(r2), "=&r"(r3), "=&r"(r4), "=&r"(r5) : "r"(A), "r"(B), "r"((uint64_t)0x0c04) : "cc");
    printf("feature bmi1 %#" PRIx64 " %#" PRIx64 " %#" PRIx64 " %#" PRIx64 " %" PRIu64 "\n", r1, r2, r3, r4, r5);
}
static void p_bmi2(void)
{
    uint64_t r1, r2, r3, r4, r5, hi, lo;
    __asm__("pdep %7, %6, %0\n pext %7, %6, %1\n bzhi %8, %6, %2\n rorx $13, %6, %3\n shlx %8, %6, %4"
            : "=&r"(r1), "=&r"(r2), "=&r"(r3), "=&r"(r4), "=&r"(r5), "=&r"(hi) : "r"(A), "r"(C), "r"((uint64_t)37));
    __asm__("mulx %2, %1, %0" : "=r"(hi), "=r"(lo) : "r"(B), "d"(A));
    printf("feature bmi2 %#" PRIx64 " %#" PRIx64 " %#" PRIx64 " %#" PRIx64 " %#" PRIx64 " %#" PRIx64 ":%#" PRIx64 "\n",
           r1, r2, r3, r4, r5, hi, lo);
}
static void p_erms(void)
{
    char src[100], dst[100];
    for (int i = 0; i < 100; i++) src[i] = (char)(i * 7), dst[i] = 0;
    void *d = dst + 3, *s = src + 1;
    size_t n = 90;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    unsigned sum = 0;
    for (int i = 0; i < 100; i++) sum = sum * 31 + (unsigned char)dst[i];
    printf("feature erms %#x\n", sum);
}
static void p_lahf(void) { uint64_t r = 0; __asm__("xor %%eax, %%eax\n cmp $1, %%eax\n lahf\n movzbl %%ah, %%eax\n mov %%rax, %0" : "=r"(r) : : "rax", "cc"); printf("feature lahf %#" PRIx64 "\n", r); }
static void p_lzcnt(void) { uint64_t r; __asm__("lzcnt %1, %0" : "=r"(r) : "r"(C >> 9) : "cc"); printf("feature lzcnt %" PRIu64 "\n", r); }
static void p_syscall(void) { printf("feature syscall %ld\n", (long)syscall(SYS_getppid) > 0); }
static void p_lm(void) { printf("feature lm %zu\n", sizeof(void *)); }
static void p_nx(void) { printf("feature nx present\n"); }
static void p_rdtscp(void)
{
    unsigned lo, hi, aux;
    __asm__ volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(aux));
    printf("feature rdtscp ok\n");
}
static void p_tsc(void) { unsigned lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); printf("feature tsc ok\n"); }
static void p_clflush(void) { static char line[64]; __asm__ volatile("clflush %0" : "+m"(line)); printf("feature clflush ok\n"); }
static void p_fxsr(void)
{
    static uint8_t area[512] __attribute__((aligned(16)));
    __asm__ volatile("fxsave %0\n fxrstor %0" : "+m"(area));
    uint16_t fcw;
    memcpy(&fcw, area, 2);
    printf("feature fxsr fcw=%#x\n", fcw);
}
/* Bits describing the platform rather than instructions a program runs. */
static void p_platform(void) {}

static const struct feature FEATURES[] = {
    {"fpu", 1, 0, EDX, 0, p_x87}, {"vme", 1, 0, EDX, 1, p_platform}, {"de", 1, 0, EDX, 2, p_platform},
    {"pse", 1, 0, EDX, 3, p_platform}, {"tsc", 1, 0, EDX, 4, p_tsc}, {"msr", 1, 0, EDX, 5, p_platform},
    {"pae", 1, 0, EDX, 6, p_platform}, {"mce", 1, 0, EDX, 7, p_platform}, {"cx8", 1, 0, EDX, 8, p_cx8},
    {"apic", 1, 0, EDX, 9, p_platform}, {"sep", 1, 0, EDX, 11, p_platform}, {"mtrr", 1, 0, EDX, 12, p_platform},
    {"pge", 1, 0, EDX, 13, p_platform}, {"mca", 1, 0, EDX, 14, p_platform}, {"cmov", 1, 0, EDX, 15, p_cmov},
    {"pat", 1, 0, EDX, 16, p_platform}, {"pse36", 1, 0, EDX, 17, p_platform},
    {"clflush", 1, 0, EDX, 19, p_clflush}, {"mmx", 1, 0, EDX, 23, p_mmx}, {"fxsr", 1, 0, EDX, 24, p_fxsr},
    {"sse", 1, 0, EDX, 25, p_sse}, {"sse2", 1, 0, EDX, 26, p_sse2}, {"ss", 1, 0, EDX, 27, p_platform},
    {"htt", 1, 0, EDX, 28, p_platform},
    {"sse3", 1, 0, ECX, 0, p_sse3}, {"pclmulqdq", 1, 0, ECX, 1, p_pclmul}, {"ssse3", 1, 0, ECX, 9, p_ssse3},
    {"cx16", 1, 0, ECX, 13, p_cx16}, {"sse4.1", 1, 0, ECX, 19, p_sse41}, {"sse4.2", 1, 0, ECX, 20, p_sse42},
    {"x2apic", 1, 0, ECX, 21, p_platform}, {"movbe", 1, 0, ECX, 22, p_movbe}, {"popcnt", 1, 0, ECX, 23, p_popcnt},
    {"aes", 1, 0, ECX, 25, p_aes}, {"xsave", 1, 0, ECX, 26, p_xsave}, {"osxsave", 1, 0, ECX, 27, p_platform},
    {"rdrand", 1, 0, ECX, 30, p_rdrand}, {"hypervisor", 1, 0, ECX, 31, p_platform},
    {"fsgsbase", 7, 0, EBX, 0, p_fsgsbase}, {"bmi1", 7, 0, EBX, 3, p_bmi1}, {"smep", 7, 0, EBX, 7, p_platform},
    {"bmi2", 7, 0, EBX, 8, p_bmi2}, {"erms", 7, 0, EBX, 9, p_erms},
    {"lahf_lm", 0x80000001, 0, ECX, 0, p_lahf}, {"abm", 0x80000001, 0, ECX, 5, p_lzcnt},
    {"syscall", 0x80000001, 0, EDX, 11, p_syscall}, {"nx", 0x80000001, 0, EDX, 20, p_nx},
    {"rdtscp", 0x80000001, 0, EDX, 27, p_rdtscp}, {"lm", 0x80000001, 0, EDX, 29, p_lm},
};

/* Instruction-set bits of the leaves glibc's cpu_features reads (every bit of these words
 * that names instructions a program may run). A set bit not in FEATURES is "unknown". */
static const struct { unsigned leaf, sub; int reg; uint32_t isa_bits; } LEAVES[] = {
    {1, 0, EDX, 0xffffffffu & ~((1u << 10) | (1u << 20) | (1u << 30))},
    {1, 0, ECX, 0xffffffffu & ~((1u << 16) | (1u << 24))},
    {7, 0, EBX, 0xffffffffu & ~((1u << 6) | (1u << 13))}, {7, 0, ECX, 0xffffffffu}, {7, 0, EDX, 0xffffffffu},
    {0x80000001, 0, ECX, 0xffffffffu}, {0x80000001, 0, EDX, (1u << 11) | (1u << 20) | (1u << 22) | (1u << 25) |
                                                              (1u << 26) | (1u << 27) | (1u << 29) | (1u << 30) | (1u << 31)},
};

static void print_features(void)
{
    unsigned max = cpuid_reg(0, 0, EAX), max_ext = cpuid_reg(0x80000000, 0, EAX);
    printf("auxv hwcap %#" PRIx64 "\nauxv hwcap2 %#" PRIx64 "\n", auxv_value(AT_HWCAP), auxv_value(AT_HWCAP2));
    printf("check hwcap=cpuid1.edx %d\n", auxv_value(AT_HWCAP) == cpuid_reg(1, 0, EDX));
    unsigned fsgs = max >= 7 && (cpuid_reg(7, 0, EBX) & 1);
    printf("check hwcap2.fsgsbase=cpuid7.ebx.fsgsbase %d\n", ((auxv_value(AT_HWCAP2) >> 1) & 1) == fsgs);
    for (size_t l = 0; l < sizeof LEAVES / sizeof LEAVES[0]; l++) {
        unsigned leaf = LEAVES[l].leaf;
        if ((leaf < 0x80000000u && leaf > max) || (leaf >= 0x80000000u && leaf > max_ext)) continue;
        unsigned word = cpuid_reg(leaf, LEAVES[l].sub, LEAVES[l].reg) & LEAVES[l].isa_bits;
        for (int bit = 0; bit < 32; bit++) {
            if (!(word >> bit & 1)) continue;
            const struct feature *f = NULL;
            for (size_t i = 0; i < sizeof FEATURES / sizeof FEATURES[0]; i++)
                if (FEATURES[i].leaf == leaf && FEATURES[i].reg == LEAVES[l].reg && FEATURES[i].bit == bit) f = &FEATURES[i];
            if (f == NULL) { printf("unknown cpuid %#x.%c bit %d\n", leaf, "abcd"[LEAVES[l].reg], bit); continue; }
            run_probe(f->name, f->probe);
        }
    }
}

/* Instructions the engine is known to compute differently from the CPU (README, "Known
 * differences"): SSSE3 horizontal add/sub with one register as both operands, and the x87
 * transcendental instructions at double instead of extended precision. */
static void print_gaps(void)
{
    uint8_t x[16];
    __asm__("movdqa %1, %%xmm0\n phaddw %%xmm0, %%xmm0\n movdqu %%xmm0, %0" : "=m"(x) : "m"(vec_a) : "xmm0");
    show_xmm("gap phaddw-same-register", x);
    long double third = 1.0L / 3, r;
    unsigned char b[10];
    __asm__("fldt %1\n fsin\n fstpt %0" : "=m"(r) : "m"(third));
    memcpy(b, &r, 10);
    printf("gap fsin ");
    for (int i = 9; i >= 0; i--) printf("%02x", b[i]);
    printf("\n");
}

#elif defined(__aarch64__)
#include <asm/hwcap.h>

__asm__(".globl state_entry\n"
        "state_entry:\n"
        "  stp x16, x17, [sp, #-16]\n"
        "  adrp x16, saved_regs\n  add x16, x16, :lo12:saved_regs\n"
        "  stp x0, x1, [x16, #0]\n   stp x2, x3, [x16, #16]\n   stp x4, x5, [x16, #32]\n"
        "  stp x6, x7, [x16, #48]\n  stp x8, x9, [x16, #64]\n   stp x10, x11, [x16, #80]\n"
        "  stp x12, x13, [x16, #96]\n stp x14, x15, [x16, #112]\n"
        "  stp x18, x19, [x16, #144]\n stp x20, x21, [x16, #160]\n"
        "  stp x22, x23, [x16, #176]\n stp x24, x25, [x16, #192]\n stp x26, x27, [x16, #208]\n"
        "  stp x28, x29, [x16, #224]\n str x30, [x16, #240]\n"
        "  ldp x0, x1, [sp, #-16]\n  stp x0, x1, [x16, #128]\n"
        "  mov x0, sp\n  str x0, [x16, #312]\n"
        "  mrs x0, nzcv\n  str x0, [x16, #256]\n"
        "  mrs x0, fpcr\n  str x0, [x16, #264]\n"
        "  mrs x0, fpsr\n  str x0, [x16, #272]\n"
        "  mrs x0, tpidr_el0\n  str x0, [x16, #280]\n"
        "  adrp x1, saved_fp\n  add x1, x1, :lo12:saved_fp\n"
        "  stp q0, q1, [x1, #0]\n    stp q2, q3, [x1, #32]\n   stp q4, q5, [x1, #64]\n"
        "  stp q6, q7, [x1, #96]\n   stp q8, q9, [x1, #128]\n  stp q10, q11, [x1, #160]\n"
        "  stp q12, q13, [x1, #192]\n stp q14, q15, [x1, #224]\n stp q16, q17, [x1, #256]\n"
        "  stp q18, q19, [x1, #288]\n stp q20, q21, [x1, #320]\n stp q22, q23, [x1, #352]\n"
        "  stp q24, q25, [x1, #384]\n stp q26, q27, [x1, #416]\n stp q28, q29, [x1, #448]\n"
        "  stp q30, q31, [x1, #480]\n"
        "  ldp x0, x1, [x16, #0]\n  ldp x16, x17, [x16, #128]\n"
        "  b _start\n");

static void print_state(void)
{
    for (int i = 0; i < 31; i++)
        if (i != 16) printf("state x%d %#" PRIx64 "\n", i, saved_regs[i]);
    printf("state sp%%16 %" PRIu64 "\n", saved_regs[39] % 16);
    printf("state nzcv %#" PRIx64 "\nstate fpcr %#" PRIx64 "\nstate fpsr %#" PRIx64 "\n",
           saved_regs[32], saved_regs[33], saved_regs[34]);
    printf("state tpidr_el0 %#" PRIx64 "\n", saved_regs[35]);
    int nonzero = 0;
    for (int i = 0; i < 512; i++) nonzero |= saved_fp[i];
    printf("state v0-v31 %s\n", nonzero ? "nonzero" : "zero");
}

static const uint64_t A = 0x0123456789abcdefULL, B = 0xfedcba9876543210ULL;
static uint8_t va[16] = "emsan-features!", vb[16] = {1, 0x80, 3, 0x84, 5, 6, 0x87, 8, 9, 10, 11, 12, 13, 14, 15, 0};

static void show_v(const char *name, const uint8_t *x)
{
    printf("feature %s ", name);
    for (int i = 0; i < 16; i++) printf("%02x", x[i]);
    printf("\n");
}
/* One SIMD instruction (or a short sequence) on v0 = va, v1 = vb, v2 = va; result from v0. */
#define VPROBE(name, ext, insns) static void p_##name(void) { uint8_t r[16]; \
    __asm__(".arch_extension " ext "\n ldr q0, %1\n ldr q1, %2\n ldr q2, %1\n" insns "\n str q0, %0" \
            : "=m"(r) : "m"(va), "m"(vb) : "v0", "v1", "v2"); show_v(#name, r); }

static void p_fp(void) { double d = 1.0 / 3; float f = 2.0f / 3; __asm__("fsqrt %d0, %d0" : "+w"(d)); printf("feature fp %a %a\n", d, f); }
VPROBE(asimd, "simd", "mul v0.8h, v0.8h, v1.8h\n uaddlv h0, v0.16b")
VPROBE(aes, "aes", "aese v0.16b, v1.16b\n aesmc v0.16b, v0.16b\n aesd v0.16b, v1.16b\n aesimc v0.16b, v0.16b")
VPROBE(pmull, "aes", "pmull2 v0.1q, v0.2d, v1.2d")
VPROBE(sha1, "sha2", "sha1c q0, s1, v2.4s\n sha1su0 v0.4s, v1.4s, v2.4s")
VPROBE(sha2, "sha2", "sha256h q0, q1, v2.4s\n sha256su1 v0.4s, v1.4s, v2.4s")
static void p_crc32(void) { uint32_t c = 0xffffffff; __asm__(".arch_extension crc\n crc32x %w0, %w0, %1\n crc32cb %w0, %w0, %w2" : "+r"(c) : "r"(A), "r"(0x5a)); printf("feature crc32 %#x\n", c); }
static void p_atomics(void)
{
    uint64_t mem = A, old, old2, cmp = A;
    __asm__ volatile(".arch_extension lse\n ldadd %2, %0, %1\n swpal %2, %3, %1\n casal %4, %2, %1"
                     : "=&r"(old), "+Q"(mem), "+r"(cmp), "=&r"(old2) : "r"(B) : "memory");
    printf("feature atomics %#" PRIx64 " %#" PRIx64 " %#" PRIx64 " %#" PRIx64 "\n", old, old2, cmp, mem);
}
static void p_fphp(void) { _Float16 h = (_Float16)1.0f / 3, r; __asm__(".arch_extension fp16\n fsqrt %h0, %h1\n fadd %h0, %h0, %h1" : "=w"(r) : "w"(h)); printf("feature fphp %a\n", (double)r); }
VPROBE(asimdhp, "fp16", "fmul v0.8h, v0.8h, v1.8h\n fmaxnmv h0, v0.8h")
VPROBE(asimdrdm, "rdma", "sqrdmlah v0.8h, v1.8h, v2.8h")
static void p_jscvt(void) { int32_t r; double d = -1e20; __asm__(".arch armv8.3-a\n fjcvtzs %w0, %d1" : "=r"(r) : "w"(d)); printf("feature jscvt %d\n", r); }
VPROBE(fcma, "fp16", ".arch armv8.3-a+fp16\n fcmla v0.4s, v1.4s, v2.4s, #90\n fcadd v0.4s, v0.4s, v1.4s, #270")
static void p_lrcpc(void) { uint64_t v = A, r; __asm__ volatile(".arch armv8.3-a\n ldapr %0, [%1]" : "=r"(r) : "r"(&v) : "memory"); printf("feature lrcpc %#" PRIx64 "\n", r); }
static void p_dcpop(void) { static uint64_t line[8]; __asm__ volatile(".arch armv8.2-a\n dc cvap, %0" : : "r"(line) : "memory"); printf("feature dcpop ok\n"); }
VPROBE(sha3, "sha3", "eor3 v0.16b, v0.16b, v1.16b, v2.16b\n rax1 v0.2d, v0.2d, v1.2d\n bcax v0.16b, v0.16b, v1.16b, v2.16b\n xar v0.2d, v0.2d, v1.2d, #17")
VPROBE(sm3, "sm4", "sm3ss1 v0.4s, v0.4s, v1.4s, v2.4s\n sm3tt1a v0.4s, v1.4s, v2.s[1]\n sm3partw1 v0.4s, v1.4s, v2.4s")
VPROBE(sm4, "sm4", "sm4e v0.4s, v1.4s\n sm4ekey v0.4s, v0.4s, v1.4s")
VPROBE(asimddp, "dotprod", "udot v0.4s, v1.16b, v2.16b\n sdot v0.4s, v0.16b, v1.4b[2]")
VPROBE(sha512, "sha3", "sha512h q0, q1, v2.2d\n sha512su0 v0.2d, v1.2d")
VPROBE(asimdfhm, "fp16fml", "fmlal v0.4s, v1.4h, v2.4h\n fmlsl2 v0.4s, v1.4h, v2.h[3]")
static void p_ilrcpc(void) { uint64_t v[2] = {A, B}, r; __asm__ volatile(".arch armv8.4-a\n ldapur %0, [%1, #8]" : "=r"(r) : "r"(v) : "memory"); printf("feature ilrcpc %#" PRIx64 "\n", r); }
static void p_flagm(void)
{
    uint64_t n1, n2;
    __asm__ volatile(".arch armv8.4-a\n msr nzcv, xzr\n cfinv\n mrs %0, nzcv\n rmif %2, #3, #0b1010\n setf8 %w2\n mrs %1, nzcv"
                     : "=&r"(n1), "=&r"(n2) : "r"(A) : "cc");
    printf("feature flagm %#" PRIx64 " %#" PRIx64 "\n", n1, n2);
}
static void p_sb(void) { __asm__ volatile(".arch armv8.5-a\n sb"); printf("feature sb ok\n"); }
static void p_dit(void) { uint64_t r; __asm__ volatile(".arch armv8.4-a\n msr dit, #1\n mrs %0, dit\n msr dit, #0" : "=r"(r)); printf("feature dit %#" PRIx64 "\n", r); }
static void p_uscat(void) { uint8_t b[32] __attribute__((aligned(16))) = {0}; uint64_t v = A, r; __asm__ volatile(".arch armv8.4-a\n stlr %2, [%1]\n ldar %0, [%1]" : "=r"(r) : "r"(b + 3), "r"(v) : "memory"); printf("feature uscat %#" PRIx64 "\n", r); }
static void p_ssbs(void) { uint64_t r; __asm__ volatile(".arch armv8.5-a\n msr ssbs, #1\n mrs %0, ssbs" : "=r"(r)); printf("feature ssbs %#" PRIx64 "\n", r); }
static void p_dcpodp(void) { static uint64_t line[8]; __asm__ volatile(".arch armv8.5-a\n dc cvadp, %0" : : "r"(line) : "memory"); printf("feature dcpodp ok\n"); }
static void p_flagm2(void) { uint64_t n; __asm__ volatile(".arch armv8.5-a\n mov x9, #0x60000000\n msr nzcv, x9\n xaflag\n mrs %0, nzcv\n axflag" : "=r"(n) : : "x9", "cc"); printf("feature flagm2 %#" PRIx64 "\n", n); }
static void p_frint(void) { double d[2] = {2.5, -1e300}; __asm__(".arch armv8.5-a\n ldr q0, %0\n frint32x v0.2d, v0.2d\n frint64z d1, d0\n str q0, %0" : "+m"(d) : : "v0", "v1"); printf("feature frint %a %a\n", d[0], d[1]); }
static void p_rng(void) { uint64_t r; uint64_t n; __asm__ volatile(".arch armv8.5-a+rng\n mrs %0, rndr\n mrs %1, nzcv" : "=r"(r), "=r"(n)); printf("feature rng %s\n", n == 0 ? "ok" : "fails"); }
VPROBE(i8mm, "i8mm", "smmla v0.4s, v1.16b, v2.16b\n usdot v0.4s, v1.16b, v2.16b")
VPROBE(bf16, "bf16", "bfdot v0.4s, v1.8h, v2.8h\n bfcvtn v0.4h, v1.4s")

struct feature { const char *name; int word, bit; void (*probe)(void); };
static const struct feature FEATURES[] = {
    {"fp", 1, 0, p_fp}, {"asimd", 1, 1, p_asimd}, {"aes", 1, 3, p_aes}, {"pmull", 1, 4, p_pmull},
    {"sha1", 1, 5, p_sha1}, {"sha2", 1, 6, p_sha2}, {"crc32", 1, 7, p_crc32}, {"atomics", 1, 8, p_atomics},
    {"fphp", 1, 9, p_fphp}, {"asimdhp", 1, 10, p_asimdhp}, {"asimdrdm", 1, 12, p_asimdrdm},
    {"jscvt", 1, 13, p_jscvt}, {"fcma", 1, 14, p_fcma}, {"lrcpc", 1, 15, p_lrcpc}, {"dcpop", 1, 16, p_dcpop},
    {"sha3", 1, 17, p_sha3}, {"sm3", 1, 18, p_sm3}, {"sm4", 1, 19, p_sm4}, {"asimddp", 1, 20, p_asimddp},
    {"sha512", 1, 21, p_sha512}, {"asimdfhm", 1, 23, p_asimdfhm}, {"dit", 1, 24, p_dit},
    {"uscat", 1, 25, p_uscat}, {"ilrcpc", 1, 26, p_ilrcpc}, {"flagm", 1, 27, p_flagm}, {"ssbs", 1, 28, p_ssbs},
    {"sb", 1, 29, p_sb},
    {"dcpodp", 2, 0, p_dcpodp}, {"flagm2", 2, 7, p_flagm2}, {"frint", 2, 8, p_frint}, {"i8mm", 2, 13, p_i8mm},
    {"bf16", 2, 14, p_bf16}, {"rng", 2, 16, p_rng},
};

static void print_features(void)
{
    uint64_t words[3] = {0, auxv_value(AT_HWCAP), auxv_value(AT_HWCAP2)};
    printf("auxv hwcap %#" PRIx64 "\nauxv hwcap2 %#" PRIx64 "\n", words[1], words[2]);
    for (int w = 1; w <= 2; w++)
        for (int bit = 0; bit < 64; bit++) {
            if (!(words[w] >> bit & 1)) continue;
            const struct feature *f = NULL;
            for (size_t i = 0; i < sizeof FEATURES / sizeof FEATURES[0]; i++)
                if (FEATURES[i].word == w && FEATURES[i].bit == bit) f = &FEATURES[i];
            if (f == NULL) { printf("unknown hwcap%s bit %d\n", w == 2 ? "2" : "", bit); continue; }
            run_probe(f->name, f->probe);
        }
}
#endif

int main(int argc, char **argv)
{
    signal(SIGILL, on_sigill);
    if (argc < 2 || strcmp(argv[1], "state") == 0) print_state();
    if (argc < 2 || strcmp(argv[1], "features") == 0) print_features();
#if defined(__x86_64__)
    if (argc >= 2 && strcmp(argv[1], "gaps") == 0) print_gaps();
#endif
    fflush(stdout);
    return 0;
}
