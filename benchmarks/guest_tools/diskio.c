/*
 * diskio: the disk transfers of benchmarks/virtio_blk.py, run inside its guest and
 * on the host alike, each timed by itself (Debian's busybox dd prints no rate, and
 * timing a dd from outside would add its fork and exec, which take long where guest
 * kernel code is slow). Every transfer uses O_DIRECT, one request at a time (queue
 * depth 1, as `fio --direct=1 --iodepth=1`):
 *
 *     diskio seqread  PATH BYTES        1 MiB reads from offset 0
 *     diskio seqwrite PATH BYTES SEED   1 MiB writes of the xorshift64 stream of SEED
 *     diskio randread PATH COUNT SEED   4 KiB reads at offsets drawn from SEED
 *
 * and prints one line:
 *
 *     diskio: MODE BYTES bytes in SECONDS s, REQUESTS requests, sum HEX
 *
 * sum is FNV-1a (64-bit) over every little-endian 64-bit word read, in order (0
 * for writes), so the host can check the data: the benchmark recomputes it for
 * randread and compares seqread with the same program's run on the host. The
 * written stream is the one benchmarks/guest_tools/pattern.c prints (the state
 * after each xorshift64 step, as a word), so the host checks the image with it.
 * A read of 4 KiB costs 512 multiplies in user mode, well under a microsecond,
 * far below a request's round trip: they stay inside the timed part.
 *
 * Exit status 1 with a message on stderr when a transfer fails or comes short.
 * Built static (the guest has no libc) by build.sh beside this file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SMALL 4096u
#define LARGE (1u << 20)
#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static uint64_t xorshift64(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *state = x;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t fnv_words(uint64_t sum, const void *data, size_t size)
{
	const uint64_t *words = data;
	for (size_t i = 0; i < size / sizeof(*words); i++)
		sum = (sum ^ words[i]) * FNV_PRIME;
	return sum;
}

/* One whole transfer of `size` bytes at `offset`; 0, or -1 with a message. */
static int transfer(int fd, int writing, void *buffer, size_t size, off_t offset)
{
	ssize_t done = writing ? pwrite(fd, buffer, size, offset) : pread(fd, buffer, size, offset);
	if (done == (ssize_t)size)
		return 0;
	fprintf(stderr, "diskio: %s at %jd: %s\n", writing ? "write" : "read", (intmax_t)offset,
		done < 0 ? strerror(errno) : "short transfer");
	return -1;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: diskio seqread|seqwrite|randread PATH BYTES|COUNT [SEED]\n");
		return 2;
	}
	const char *mode = argv[1], *path = argv[2];
	unsigned long long amount = strtoull(argv[3], NULL, 0);
	uint64_t state = argc > 4 ? strtoull(argv[4], NULL, 0) : 0;
	int writing = strcmp(mode, "seqwrite") == 0, random = strcmp(mode, "randread") == 0;
	if (!writing && !random && strcmp(mode, "seqread") != 0) {
		fprintf(stderr, "diskio: unknown mode %s\n", mode);
		return 2;
	}
	if ((writing || random) && state == 0) { /* xorshift's state must not be 0 */
		fprintf(stderr, "diskio: %s needs a SEED above 0\n", mode);
		return 2;
	}
	size_t block = random ? SMALL : LARGE;
	unsigned long long requests = random ? amount : amount / block;
	if (requests == 0 || (!random && amount % block != 0)) {
		fprintf(stderr, "diskio: BYTES must be a positive multiple of 1 MiB, COUNT above 0\n");
		return 2;
	}
	int fd = open(path, (writing ? O_WRONLY : O_RDONLY) | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "diskio: %s: %s\n", path, strerror(errno));
		return 1;
	}
	uint64_t blocks = (uint64_t)lseek(fd, 0, SEEK_END) / SMALL;
	if (random && blocks == 0) {
		fprintf(stderr, "diskio: %s: smaller than %u bytes\n", path, SMALL);
		return 1;
	}
	void *buffer;
	if (posix_memalign(&buffer, SMALL, block) != 0) { /* O_DIRECT wants it aligned */
		fprintf(stderr, "diskio: out of memory\n");
		return 1;
	}
	uint64_t sum = writing ? 0 : FNV_OFFSET;
	double seconds = 0;
	for (unsigned long long i = 0; i < requests; i++) {
		off_t offset = random ? (off_t)(xorshift64(&state) % blocks) * SMALL : (off_t)(i * block);
		if (writing) { /* made outside the timed part: only the disk is timed */
			uint64_t *words = buffer;
			for (size_t j = 0; j < block / sizeof(*words); j++)
				words[j] = xorshift64(&state);
		}
		double started = now();
		if (transfer(fd, writing, buffer, block, offset) < 0)
			return 1;
		if (!writing)
			sum = fnv_words(sum, buffer, block);
		seconds += now() - started;
	}
	printf("diskio: %s %llu bytes in %.3f s, %llu requests, sum %016" PRIx64 "\n", mode,
	       requests * block, seconds, requests, sum);
	return 0;
}
