/*
 * netio: one TCP stream between a guest and its host, moved with large reads
 * and writes, timed and checksummed by the program itself.
 *
 *     netio send HOST PORT PATH            PATH's bytes to HOST:PORT
 *     netio send HOST PORT BYTES SEED      BYTES of pattern.c's stream
 *     netio recv HOST PORT PATH            HOST:PORT's stream into PATH
 *     netio sum PATH                       the checksum of PATH ("-": stdin)
 *
 * Why not busybox nc: it moves 1 KiB per read and write, and on a software
 * KVM every guest system call is slow kernel code, so nc measures the guest's
 * syscall cost, not the network. netio moves 1 MiB per call, which lets the
 * guest's TCP hand the device 64 KiB segments where TSO is negotiated.
 *
 * send shuts its side down when the source ends, then waits for the peer to
 * close; recv reads to the end of the stream. Each prints one line:
 *     netio: send|recv N bytes in S s, sum HHHHHHHHHHHHHHHH
 * the sum being diskio.c's: FNV-1a over the stream's little-endian 64-bit
 * words (a short tail zero-padded). The time is from the connection's first
 * byte to its end. Exit status 1 with a message on stderr when a call fails.
 *
 * Built static by build.sh beside this file.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1u << 20)
#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static uint64_t words[CHUNK / sizeof(uint64_t)];

static int fail(const char *what)
{
	fprintf(stderr, "netio: %s: %s\n", what, strerror(errno));
	return 1;
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Sum whole words only; the caller keeps a partial word for the next call. */
static uint64_t fnv_words(uint64_t sum, const unsigned char *data, size_t size)
{
	for (size_t i = 0; i + 8 <= size; i += 8) {
		uint64_t word;
		memcpy(&word, data + i, 8);
		sum = (sum ^ word) * FNV_PRIME;
	}
	return sum;
}

/* A running checksum over a byte stream cut anywhere. */
struct summer {
	uint64_t sum;
	unsigned char tail[8];
	size_t kept;
};

static void sum_add(struct summer *s, const unsigned char *data, size_t size)
{
	while (s->kept > 0 && size > 0) {
		s->tail[s->kept++] = *data++;
		size--;
		if (s->kept == 8) {
			s->sum = fnv_words(s->sum, s->tail, 8);
			s->kept = 0;
		}
	}
	size_t whole = size & ~(size_t)7;
	s->sum = fnv_words(s->sum, data, whole);
	memcpy(s->tail, data + whole, size - whole);
	s->kept = size - whole;
}

static uint64_t sum_end(struct summer *s)
{
	if (s->kept > 0) {
		memset(s->tail + s->kept, 0, 8 - s->kept);
		s->sum = fnv_words(s->sum, s->tail, 8);
		s->kept = 0;
	}
	return s->sum;
}

/* One read of up to CHUNK bytes into words[], retried on EINTR: bytes read, 0 at
 * the end, -1 on an error. */
static ssize_t read_chunk(int fd)
{
	for (;;) {
		ssize_t got = read(fd, words, CHUNK);
		if (got >= 0 || errno != EINTR)
			return got;
	}
}

static int write_all(int fd, const unsigned char *at, size_t size)
{
	while (size > 0) {
		ssize_t done = write(fd, at, size);
		if (done < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		at += done;
		size -= (size_t)done;
	}
	return 0;
}

static int connect_to(const char *host, const char *port)
{
	struct sockaddr_in address = { .sin_family = AF_INET };
	address.sin_port = htons((uint16_t)strtoul(port, NULL, 10));
	if (inet_pton(AF_INET, host, &address.sin_addr) != 1) {
		fprintf(stderr, "netio: %s is not an IPv4 address\n", host);
		return -1;
	}
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void report(const char *what, unsigned long long bytes, double seconds, struct summer *s)
{
	printf("netio: %s %llu bytes in %.3f s, sum %016llx\n", what, bytes, seconds,
	       (unsigned long long)sum_end(s));
	fflush(stdout);
}

/* pattern.c's stream: the xorshift64 state after each step. */
static void pattern_chunk(uint64_t *state)
{
	for (size_t i = 0; i < CHUNK / sizeof(uint64_t); i++) {
		*state ^= *state << 13;
		*state ^= *state >> 7;
		*state ^= *state << 17;
		words[i] = *state;
	}
}

static int send_stream(int argc, char **argv)
{
	int from = -1;
	unsigned long long left = 0;
	uint64_t state = 0;
	if (argc == 5) {
		from = open(argv[4], O_RDONLY);
		if (from < 0)
			return fail(argv[4]);
	} else {
		left = strtoull(argv[4], NULL, 0);
		state = strtoull(argv[5], NULL, 0);
		if (state == 0) {
			fprintf(stderr, "netio: SEED must be above 0\n");
			return 2;
		}
	}
	int fd = connect_to(argv[2], argv[3]);
	if (fd < 0)
		return fail("connect");
	struct summer s = { .sum = FNV_OFFSET };
	unsigned long long sent = 0;
	double started = now();
	for (;;) {
		size_t size;
		if (from >= 0) {
			ssize_t got = read_chunk(from);
			if (got < 0)
				return fail("read");
			size = (size_t)got;
		} else {
			if (left == 0)
				break;
			pattern_chunk(&state);
			size = left < CHUNK ? (size_t)left : CHUNK;
			left -= size;
		}
		if (size == 0)
			break;
		sum_add(&s, (unsigned char *)words, size);
		if (write_all(fd, (unsigned char *)words, size) < 0)
			return fail("send");
		sent += size;
	}
	if (shutdown(fd, SHUT_WR) < 0)
		return fail("shutdown");
	while (read_chunk(fd) > 0) /* until the peer has it all and closes */
		;
	report("send", sent, now() - started, &s);
	return 0;
}

static int receive_stream(char **argv)
{
	int to = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (to < 0)
		return fail(argv[4]);
	int fd = connect_to(argv[2], argv[3]);
	if (fd < 0)
		return fail("connect");
	struct summer s = { .sum = FNV_OFFSET };
	unsigned long long received = 0;
	double started = 0;
	for (;;) {
		ssize_t got = read_chunk(fd);
		if (got < 0)
			return fail("recv");
		if (got == 0)
			break;
		if (received == 0)
			started = now();
		sum_add(&s, (unsigned char *)words, (size_t)got);
		if (write_all(to, (unsigned char *)words, (size_t)got) < 0)
			return fail("write");
		received += (unsigned long long)got;
	}
	close(fd);
	if (close(to) < 0)
		return fail("close");
	report("recv", received, received ? now() - started : 0.0, &s);
	return 0;
}

static int sum_file(const char *path)
{
	int from = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY);
	if (from < 0)
		return fail(path);
	struct summer s = { .sum = FNV_OFFSET };
	unsigned long long total = 0;
	double started = now();
	for (;;) {
		ssize_t got = read_chunk(from);
		if (got < 0)
			return fail("read");
		if (got == 0)
			break;
		sum_add(&s, (unsigned char *)words, (size_t)got);
		total += (unsigned long long)got;
	}
	report("sum", total, now() - started, &s);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "sum") == 0)
		return sum_file(argv[2]);
	if ((argc == 5 || argc == 6) && strcmp(argv[1], "send") == 0)
		return send_stream(argc, argv);
	if (argc == 5 && strcmp(argv[1], "recv") == 0)
		return receive_stream(argv);
	fprintf(stderr, "usage: netio send HOST PORT PATH | netio send HOST PORT BYTES SEED\n"
			"       netio recv HOST PORT PATH | netio sum PATH\n");
	return 2;
}
