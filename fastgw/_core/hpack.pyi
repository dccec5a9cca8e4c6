class H2Decoder:
    max_header_list_size: int
    max_allowed_table_size: int
    header_table_size: int
    def __init__(self, max_header_list_size: int = 65536) -> None: ...
    def decode(self, data: bytes, raw: bool = True) -> list[tuple[bytes, bytes]]: ...

class H2Encoder:
    header_table_size: int
    def encode(self, headers: list[tuple[bytes, bytes]], huffman: bool = True) -> bytes: ...
