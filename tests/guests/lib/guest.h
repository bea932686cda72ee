/* Everything a test guest usually needs. */
#ifndef GUEST_H
#define GUEST_H

#include <stdint.h>
#include <stddef.h>
#include "io.h"
#include "serial.h"
#include "printf.h"
#include "string.h"
#include "platform.h"

#endif
