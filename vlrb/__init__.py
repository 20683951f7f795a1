"""vlrb"""
