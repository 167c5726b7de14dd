"""Names of onnxopt's custom ops: the one place they are spelled.

Passes, the ONNX-function fallbacks, the tests and the C++ library (through a header CMake
generates from this file, see ``runtime/cmake/OpNames.cmake``) all take them from here. Keep
each assignment on one line as ``NAME = "value"`` or ``NAME = 1``: CMake parses them.
"""
DOMAIN = "ai.onnxopt"
OP_VERSION = 1
ADDRESS_CONV = "AddressConv"
PERFORATED_CONV = "PerforatedConv"
#: The blocked layout of AddressConv chains (runtime/csrc/blocked_conv.h): NCHW16c with a zero border of 1.
TO_BLOCKED = "ToBlocked"
FROM_BLOCKED = "FromBlocked"
BLOCKED_ADDRESS_CONV = "BlockedAddressConv"
#: Two BlockedAddressConvs in one op, the inner result never stored (blocked_address_conv_pair()).
BLOCKED_ADDRESS_CONV_PAIR = "BlockedAddressConvPair"
#: GlobalAveragePool of a blocked tensor, [N, C, 1, 1] out (FromBlocked + GlobalAveragePool in one pass).
BLOCKED_GLOBAL_AVERAGE_POOL = "BlockedGlobalAveragePool"
#: An AddressConv from an NCHW image into the blocked layout (a net's stem: ToBlocked + BlockedAddressConv in one).
BLOCKED_ENTRY_CONV = "BlockedEntryConv"

#: The ops the native library registers.
NATIVE_OPS = (ADDRESS_CONV, PERFORATED_CONV, TO_BLOCKED, FROM_BLOCKED, BLOCKED_ADDRESS_CONV,
              BLOCKED_ADDRESS_CONV_PAIR, BLOCKED_GLOBAL_AVERAGE_POOL, BLOCKED_ENTRY_CONV)
