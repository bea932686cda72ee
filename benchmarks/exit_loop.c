/* exit_loop_c: the reference VMM for benchmarks/exit_loop.py.
 *
 * The least a VMM can do per VM exit: KVM_RUN in a loop, switch on the exit
 * reason, re-enter. The VM is set up like pyvmm sets up a flat binary
 * (docs/boot.md): one RAM slot at guest physical 0, the image at 0x7C00,
 * 16-bit real mode with CS:IP = SS:SP = 0000:7C00 and DL = 0x80, an
 * in-kernel irqchip and PIT, KVM's TSS and identity-map pages where pyvmm
 * puts them. Port I/O and MMIO exits are counted and dropped (MMIO reads
 * return all ones, as on pyvmm's unclaimed ranges); any other exit is an
 * error.
 *
 *     exit_loop_c GUEST MEMORY SECONDS
 *
 * MEMORY is bytes, or a number with a K, M or G suffix. After a warm-up of
 * WARMUP_SECONDS it counts exits for SECONDS of CLOCK_MONOTONIC and prints
 *
 *     exits=<n> seconds=<s>
 *     rss_kib=<VmRSS of this process>
 *
 * and exits 0; on any error it prints one line to stderr and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOAD_ADDRESS 0x7C00u       /* where a BIOS puts a boot sector */
#define LOAD_LIMIT 0xA0000u        /* flat images end below the VGA window */
#define BOOT_DRIVE 0x80u           /* DL at entry */
#define TSS_ADDRESS 0xFFFBD000u    /* pyvmm.arch.x86.layout.KVM_TSS_ADDRESS */
#define IDENTITY_MAP_ADDRESS 0xFFFBC000ull /* ...KVM_IDENTITY_MAP_ADDRESS */
#define WARMUP_SECONDS 0.2
#define CLOCK_EVERY 64             /* exits between two clock reads */

static void die(const char *format, ...)
{
	va_list args;

	fputs("exit_loop_c: ", stderr);
	va_start(args, format);
	vfprintf(stderr, format, args);
	va_end(args);
	fputc('\n', stderr);
	exit(1);
}

static int kvm_ioctl(int fd, unsigned long request, unsigned long arg, const char *name)
{
	int result = ioctl(fd, request, arg);

	if (result < 0)
		die("%s: %s", name, strerror(errno));
	return result;
}

static uint64_t parse_size(const char *text)
{
	char *end;
	unsigned long long value;

	errno = 0;
	value = strtoull(text, &end, 0);
	if (errno || end == text)
		die("cannot read memory size '%s'", text);
	switch (*end) {
	case 'G': case 'g': value <<= 10; /* fall through */
	case 'M': case 'm': value <<= 10; /* fall through */
	case 'K': case 'k': value <<= 10; end++; break;
	case '\0': break;
	default: die("cannot read memory size '%s'", text);
	}
	if (*end != '\0' || value < LOAD_LIMIT || value % 4096)
		die("memory size '%s' must be whole 4 KiB pages, at least 640 KiB", text);
	return value;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long rss_kib(void)
{
	char line[256];
	long kib = -1;
	FILE *status = fopen("/proc/self/status", "r");

	if (!status)
		return -1;
	while (fgets(line, sizeof line, status))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(status);
	return kib;
}

static void load_image(const char *path, uint8_t *ram)
{
	struct stat info;
	ssize_t done = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		die("%s: %s", path, strerror(errno));
	if (fstat(fd, &info) < 0)
		die("%s: %s", path, strerror(errno));
	if (info.st_size <= 0 || info.st_size > (off_t)(LOAD_LIMIT - LOAD_ADDRESS))
		die("%s: %lld bytes; a flat image holds 1 to %u", path,
		    (long long)info.st_size, LOAD_LIMIT - LOAD_ADDRESS);
	while (done < info.st_size) {
		ssize_t got = read(fd, ram + LOAD_ADDRESS + done, (size_t)(info.st_size - done));

		if (got <= 0)
			die("%s: short read", path);
		done += got;
	}
	close(fd);
}

static void enter_real_mode(int vcpu)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct kvm_segment *segments[] = {
		&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss,
	};

	kvm_ioctl(vcpu, KVM_GET_SREGS, (unsigned long)&sregs, "KVM_GET_SREGS");
	for (size_t i = 0; i < sizeof segments / sizeof segments[0]; i++) {
		segments[i]->base = 0;
		segments[i]->selector = 0;
	}
	kvm_ioctl(vcpu, KVM_SET_SREGS, (unsigned long)&sregs, "KVM_SET_SREGS");

	memset(&regs, 0, sizeof regs);
	regs.rip = LOAD_ADDRESS;
	regs.rsp = LOAD_ADDRESS;
	regs.rdx = BOOT_DRIVE;
	regs.rflags = 2; /* bit 1 is reserved and always set */
	kvm_ioctl(vcpu, KVM_SET_REGS, (unsigned long)&regs, "KVM_SET_REGS");
}

int main(int argc, char **argv)
{
	if (argc != 4)
		die("usage: exit_loop_c GUEST MEMORY SECONDS");
	uint64_t memory_size = parse_size(argv[2]);
	double seconds = strtod(argv[3], NULL);
	if (!(seconds > 0))
		die("SECONDS must be a positive number, not '%s'", argv[3]);

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm: %s", strerror(errno));
	if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		die("unexpected KVM API version");
	int vm = kvm_ioctl(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");

	/* The same platform pyvmm's Machine builds, so both pay for the same VM. */
	if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_TSS_ADDR) > 0)
		kvm_ioctl(vm, KVM_SET_TSS_ADDR, TSS_ADDRESS, "KVM_SET_TSS_ADDR");
	if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0) {
		uint64_t address = IDENTITY_MAP_ADDRESS;
		kvm_ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, (unsigned long)&address,
			  "KVM_SET_IDENTITY_MAP_ADDR");
	}
	if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP) > 0) {
		kvm_ioctl(vm, KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
		if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_PIT2) > 0) {
			struct kvm_pit_config pit = { .flags = 0 };
			kvm_ioctl(vm, KVM_CREATE_PIT2, (unsigned long)&pit, "KVM_CREATE_PIT2");
		}
	}

	uint8_t *ram = mmap(NULL, memory_size, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED)
		die("mmap of %llu bytes: %s", (unsigned long long)memory_size, strerror(errno));
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.guest_phys_addr = 0,
		.memory_size = memory_size,
		.userspace_addr = (uintptr_t)ram,
	};
	kvm_ioctl(vm, KVM_SET_USER_MEMORY_REGION, (unsigned long)&region,
		  "KVM_SET_USER_MEMORY_REGION");
	load_image(argv[1], ram);

	int vcpu = kvm_ioctl(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
	int run_size = kvm_ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE,
				   MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap of kvm_run: %s", strerror(errno));
	enter_real_mode(vcpu);

	/* The measured loop: nothing but KVM_RUN, the switch and a counter. */
	uint64_t exits = 0, start_exits = 0;
	double start = 0, end = 0, warm_until = now() + WARMUP_SECONDS;
	int measuring = 0;
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN: %s", strerror(errno));
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			break;
		case KVM_EXIT_MMIO:
			if (!run->mmio.is_write)
				memset(run->mmio.data, 0xff, sizeof run->mmio.data);
			break;
		default:
			die("unexpected exit reason %u after %llu exits", run->exit_reason,
			    (unsigned long long)exits);
		}
		if (++exits % CLOCK_EVERY)
			continue;
		double t = now();
		if (!measuring) {
			if (t >= warm_until) {
				measuring = 1;
				start = t;
				start_exits = exits;
			}
		} else if (t - start >= seconds) {
			end = t;
			break;
		}
	}
	printf("exits=%llu seconds=%.6f\n", (unsigned long long)(exits - start_exits), end - start);
	printf("rss_kib=%ld\n", rss_kib());
	return 0;
}
