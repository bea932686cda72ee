/*
 * pattern: BYTES bytes of a seeded xorshift64 stream on stdout, for the TCP
 * benchmark's guest-to-host direction (benchmarks/virtio_net.py): random data
 * made at user-mode speed (the guest kernel's /dev/urandom is slow code on a
 * software KVM), which the host regenerates to check what it received.
 *
 *     pattern BYTES SEED | nc HOST PORT
 *
 * The stream is the state after each xorshift64 step, as a little-endian
 * 64-bit word; BYTES is cut at the end. Written 64 KiB at a time. Exit status
 * 1 with a message on stderr when a write fails.
 *
 * Built static by build.sh beside this file.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK 65536u

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: pattern BYTES SEED\n");
		return 2;
	}
	unsigned long long left = strtoull(argv[1], NULL, 0);
	uint64_t state = strtoull(argv[2], NULL, 0);
	if (state == 0) { /* xorshift's state must not be 0 */
		fprintf(stderr, "pattern: SEED must be above 0\n");
		return 2;
	}
	static uint64_t words[CHUNK / sizeof(uint64_t)];
	while (left > 0) {
		for (size_t i = 0; i < CHUNK / sizeof(uint64_t); i++) {
			state ^= state << 13;
			state ^= state >> 7;
			state ^= state << 17;
			words[i] = state; /* x86-64: stored little-endian */
		}
		size_t size = left < CHUNK ? (size_t)left : CHUNK;
		const char *at = (const char *)words;
		while (size > 0) {
			ssize_t done = write(STDOUT_FILENO, at, size);
			if (done < 0) {
				if (errno == EINTR)
					continue;
				fprintf(stderr, "pattern: write: %s\n", strerror(errno));
				return 1;
			}
			at += done;
			size -= (size_t)done;
			left -= (unsigned long long)done;
		}
	}
	return 0;
}
